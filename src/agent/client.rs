//! The agent's client end: what the plugin and the operator's tools call.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::de::DeserializeOwned;

use crate::agent::protocol::{CallReport, Reply, Request, AGENT_WAIT, MAX_REPLY};
use crate::agent::records::{MembershipRecord, RelayRecord};
use crate::sys::netns::Netns;

/// Why the agent did not do what it was asked: the one error of every call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No agent answered at the socket (none runs, or not in time, or not in its protocol).
    #[error("no node agent at {socket} ({source})")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent answered, and refused; its words.
    #[error("the node agent refused: {0}")]
    Refused(String),
}

/// What a call of the agent gives.
pub type CallResult<T> = std::result::Result<T, CallError>;

/// The agent's client end: one request per connection, bounded in time.
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: &Path) -> AgentClient {
        AgentClient {
            socket: socket.to_owned(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Hands `fd` to the agent for `record`'s attachment (with this call's report, when it
    /// is a plugin call).
    pub fn hold(&self, record: &MembershipRecord, fd: &OwnedFd) -> CallResult<()> {
        let request = Request::Hold {
            record: Box::new(record.clone()),
            report: CallReport::of_this_call(),
        };
        self.call::<MembershipRecord>(&request, &[fd.as_raw_fd()])
            .map(drop)
    }

    pub fn drop_key(&self, key: &str) -> CallResult<()> {
        self.call::<MembershipRecord>(
            &Request::Drop {
                key: key.to_owned(),
                report: CallReport::of_this_call(),
            },
            &[],
        )
        .map(drop)
    }

    /// Every membership the agent holds (the operator's tools; grows with the node).
    pub fn list(&self) -> CallResult<Vec<MembershipRecord>> {
        self.call(&Request::List, &[]).map(|r| r.held)
    }

    /// The memberships the agent holds for attachments in the namespace of `netns_inode`.
    pub fn held_in(&self, netns_inode: u64) -> CallResult<Vec<MembershipRecord>> {
        self.one_namespace(
            &Request::HeldIn { netns_inode },
            &Request::List,
            |r: &MembershipRecord| r.netns_inode == netns_inode,
        )
    }

    /// What `asked` (a listing of one namespace) returns. An agent of an earlier version
    /// refuses the question (an upgrade's window): then its whole listing (`whole`),
    /// filtered here by `in_it`.
    fn one_namespace<T: DeserializeOwned>(
        &self,
        asked: &Request,
        whole: &Request,
        in_it: impl Fn(&T) -> bool,
    ) -> CallResult<Vec<T>> {
        match self.call::<T>(asked, &[]) {
            Err(CallError::Refused(_)) => Ok(self
                .call::<T>(whole, &[])?
                .held
                .into_iter()
                .filter(in_it)
                .collect()),
            reply => reply.map(|r| r.held),
        }
    }

    /// Hands the relay's listeners (`fds`, in `record.listen`'s order) to the agent.
    pub fn relay(&self, record: &RelayRecord, fds: &[RawFd]) -> CallResult<()> {
        let request = Request::Relay(Box::new(record.clone()));
        self.call::<RelayRecord>(&request, fds).map(drop)
    }

    pub fn drop_relay(&self, key: &str) -> CallResult<()> {
        self.call::<RelayRecord>(
            &Request::DropRelay {
                key: key.to_owned(),
            },
            &[],
        )
        .map(drop)
    }

    /// The relays the agent holds now.
    pub fn relays(&self) -> CallResult<Vec<RelayRecord>> {
        self.call(&Request::Relays, &[]).map(|r| r.held)
    }

    /// The relay the agent holds in the namespace `ns`, if any (doctor's question).
    pub fn relay_in(&self, ns: &Netns) -> Option<RelayRecord> {
        let netns_inode = ns.inode().ok()?;
        let in_it = |r: &RelayRecord| r.attachment.netns_inode == netns_inode;
        self.one_namespace(&Request::RelaysIn { netns_inode }, &Request::Relays, in_it)
            .ok()?
            .into_iter()
            .find(in_it)
    }

    /// One request, its refusal an error.
    pub fn call<T: DeserializeOwned>(
        &self,
        request: &Request,
        fds: &[RawFd],
    ) -> CallResult<Reply<T>> {
        let reply: Reply<T> =
            self.exchange(request, fds)
                .map_err(|source| CallError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        reply.into_result().map_err(CallError::Refused)
    }

    /// One request line (with `fds` passed along) and its reply line, bounded in time.
    fn exchange<A: DeserializeOwned>(&self, request: &Request, fds: &[RawFd]) -> io::Result<A> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(AGENT_WAIT))?;
        stream.set_write_timeout(Some(AGENT_WAIT))?;
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        // The descriptor rides on the first bytes; the rest of the line follows if needed.
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&line)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        (&stream).write_all(&line[sent..])?;
        let mut reply = Vec::new();
        (&stream).take(MAX_REPLY as u64).read_to_end(&mut reply)?;
        serde_json::from_slice(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// What the plugin asks of the node agent: `AgentClient` over its socket, or a fake that
/// records the calls in the plugin's unit tests (`fake::FakeAgent`).
pub trait AgentCalls {
    /// Where the agent is asked (for the plugin's notes).
    fn socket(&self) -> &Path;
    fn hold(&self, record: &MembershipRecord, fd: &OwnedFd) -> CallResult<()>;
    fn drop_key(&self, key: &str) -> CallResult<()>;
    fn held_in(&self, netns_inode: u64) -> CallResult<Vec<MembershipRecord>>;
    fn relay(&self, record: &RelayRecord, fds: &[RawFd]) -> CallResult<()>;
    fn drop_relay(&self, key: &str) -> CallResult<()>;
}

impl AgentCalls for AgentClient {
    fn socket(&self) -> &Path {
        AgentClient::socket(self)
    }
    fn hold(&self, record: &MembershipRecord, fd: &OwnedFd) -> CallResult<()> {
        AgentClient::hold(self, record, fd)
    }
    fn drop_key(&self, key: &str) -> CallResult<()> {
        AgentClient::drop_key(self, key)
    }
    fn held_in(&self, netns_inode: u64) -> CallResult<Vec<MembershipRecord>> {
        AgentClient::held_in(self, netns_inode)
    }
    fn relay(&self, record: &RelayRecord, fds: &[RawFd]) -> CallResult<()> {
        AgentClient::relay(self, record, fds)
    }
    fn drop_relay(&self, key: &str) -> CallResult<()> {
        AgentClient::drop_relay(self, key)
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// An agent in memory: every call is recorded (`"hold KEY"`, `"drop KEY"`, `"relay
    /// KEY"`, `"dropRelay KEY"`, `"heldIn INODE"`); it answers as told (`reachable`), holding nothing.
    #[derive(Clone, Default)]
    pub struct FakeAgent {
        pub calls: Rc<RefCell<Vec<String>>>,
        pub unreachable: bool,
    }

    impl FakeAgent {
        fn call(&self, what: String) -> CallResult<()> {
            self.calls.borrow_mut().push(what);
            if self.unreachable {
                return Err(CallError::Unreachable {
                    socket: self.socket().to_owned(),
                    source: io::Error::from(io::ErrorKind::ConnectionRefused),
                });
            }
            Ok(())
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl AgentCalls for FakeAgent {
        fn socket(&self) -> &Path {
            Path::new("/run/ros-macvlan/fake.sock")
        }
        fn hold(&self, record: &MembershipRecord, _: &OwnedFd) -> CallResult<()> {
            self.call(format!("hold {}", record.key()))
        }
        fn drop_key(&self, key: &str) -> CallResult<()> {
            self.call(format!("drop {key}"))
        }
        fn held_in(&self, netns_inode: u64) -> CallResult<Vec<MembershipRecord>> {
            self.call(format!("heldIn {netns_inode}"))
                .map(|()| Vec::new())
        }
        fn relay(&self, record: &RelayRecord, _: &[RawFd]) -> CallResult<()> {
            self.call(format!("relay {}", record.attachment.key()))
        }
        fn drop_relay(&self, key: &str) -> CallResult<()> {
            self.call(format!("dropRelay {key}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::records::tests::record;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// An agent of an earlier version: it refuses `heldIn` as no request it knows, and
    /// answers `list` with every membership.
    fn an_earlier_agent(
        socket: &Path,
        held: Vec<MembershipRecord>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let mut asked = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let reply = if line.trim() == r#""list""# {
                    Reply {
                        held: held.clone(),
                        ..Reply::accepted()
                    }
                } else {
                    Reply::refused("not a request: unknown variant".into())
                };
                asked.push(line.trim().to_owned());
                (&stream)
                    .write_all(&serde_json::to_vec(&reply).unwrap())
                    .unwrap();
            }
            asked
        })
    }

    #[test]
    fn held_in_asks_for_one_namespace_and_falls_back_on_an_earlier_agent() {
        let dir = std::env::temp_dir().join(format!("rm-held-in-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let here = MembershipRecord {
            netns_inode: 7,
            ..record()
        };
        let elsewhere = MembershipRecord {
            netns_inode: 8,
            container_id: "other".into(),
            ..record()
        };
        let agent = an_earlier_agent(&socket, vec![here.clone(), elsewhere]);
        let held = AgentClient::new(&socket).held_in(7).unwrap();
        assert_eq!(held, vec![here], "the earlier agent's listing, filtered");
        assert_eq!(
            agent.join().unwrap(),
            vec![
                r#"{"heldIn":{"netnsInode":7}}"#.to_owned(),
                r#""list""#.to_owned()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
