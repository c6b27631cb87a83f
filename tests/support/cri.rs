//! A CRI client, as kubelet speaks to the container runtime: gRPC over the runtime's unix
//! socket, with the CRI API's generated client (crate k8s-cri). Each call blocks, with a
//! time limit, on a runtime of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// How long one CRI call may take: RunPodSandbox runs the CNI plugins.
const CALL_LIMIT: Duration = Duration::from_secs(60);

impl Cri {
    /// Connects to the runtime listening on `socket`, waiting up to 20 s for it to answer.
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = socket.to_path_buf();
        let channel = rt.block_on(async move {
            for _ in 0..200 {
                let p: PathBuf = path.clone();
                let connector = tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                });
                if let Ok(c) = Endpoint::from_static("http://[::]:0")
                    .connect_with_connector(connector)
                    .await
                {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("containerd does not answer on {}", path.display());
        });
        let mut cri = Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        };
        // The CRI service answers once containerd has loaded it.
        for _ in 0..100 {
            if cri.status_ready() {
                return cri;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd's CRI service is not ready");
    }

    fn call<T, F>(&mut self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.try_call(f)
            .unwrap_or_else(|e| panic!("CRI {what} failed: {e}"))
    }

    fn try_call<T, F>(
        &mut self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        self.rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, fut).await })
            .map_err(|_| "timed out".to_owned())?
            .map(tonic::Response::into_inner)
            .map_err(|s| s.message().to_owned())
    }

    fn status_ready(&mut self) -> bool {
        self.try_call(|mut c| async move { c.status(StatusRequest { verbose: false }).await })
            .is_ok()
    }

    /// RunPodSandbox: the runtime creates the pod's netns and runs CNI ADD in it.
    pub fn run_sandbox(&mut self, config: PodSandboxConfig) -> Result<String, String> {
        self.try_call(|mut c| async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                ..Default::default()
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// StopPodSandbox: the pod's containers are killed and CNI DEL runs with the netns.
    pub fn stop_sandbox(&mut self, id: &str) -> Result<(), String> {
        let id = id.to_owned();
        self.try_call(|mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// RemovePodSandbox: DEL again, without a netns.
    pub fn remove_sandbox(&mut self, id: &str) -> Result<(), String> {
        let id = id.to_owned();
        self.try_call(|mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn sandboxes(&mut self) -> Vec<PodSandbox> {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest::default()).await
        })
        .items
    }

    /// The sandbox's status and, verbose, the runtime's info (its netns path among them).
    pub fn sandbox_status(&mut self, id: &str) -> PodSandboxStatusResponse {
        let id = id.to_owned();
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })
    }

    /// CreateContainer then StartContainer, as kubelet starts each container of a pod.
    pub fn start_container(
        &mut self,
        sandbox: &str,
        config: ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, String> {
        let (id, sc) = (sandbox.to_owned(), sandbox_config.clone());
        let created = self.try_call(|mut c| async move {
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: id,
                config: Some(config),
                sandbox_config: Some(sc),
            })
            .await
        })?;
        let cid = created.container_id.clone();
        self.try_call(|mut c| async move {
            c.start_container(StartContainerRequest { container_id: cid })
                .await
        })?;
        Ok(created.container_id)
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), String> {
        let id = id.to_owned();
        self.try_call(|mut c| async move {
            c.remove_container(RemoveContainerRequest { container_id: id })
                .await
        })
        .map(drop)
    }

    pub fn container_status(&mut self, id: &str) -> ContainerStatusResponse {
        let id = id.to_owned();
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: true,
            })
            .await
        })
    }

    /// ExecSync: a command in a running container (a readiness probe, `gc`).
    pub fn exec(&mut self, id: &str, cmd: &[String]) -> ExecSyncResponse {
        let (id, cmd) = (id.to_owned(), cmd.to_vec());
        self.call("ExecSync", |mut c| async move {
            c.exec_sync(ExecSyncRequest {
                container_id: id,
                cmd,
                timeout: 30,
            })
            .await
        })
    }
}
