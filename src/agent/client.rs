//! The agent's client end: what the plugin and the operator's tools call.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::de::DeserializeOwned;

use crate::agent::protocol::{CallReport, Reply, Request, AGENT_WAIT, MAX_MESSAGE};
use crate::agent::records::{MembershipRecord, RelayRecord};
use crate::sys::netns::Netns;

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
    pub fn hold(&self, record: &MembershipRecord, fd: &OwnedFd) -> io::Result<()> {
        let request = Request::Hold {
            record: Box::new(record.clone()),
            report: CallReport::of_this_call(),
        };
        self.call::<MembershipRecord>(&request, &[fd.as_raw_fd()])
            .map(drop)
    }

    pub fn drop_key(&self, key: &str) -> io::Result<()> {
        self.call::<MembershipRecord>(
            &Request::Drop {
                key: key.to_owned(),
                report: CallReport::of_this_call(),
            },
            &[],
        )
        .map(drop)
    }

    pub fn list(&self) -> io::Result<Vec<MembershipRecord>> {
        self.call(&Request::List, &[]).map(|r| r.held)
    }

    /// Hands the relay's listeners (`fds`, in `record.listen`'s order) to the agent. The
    /// outer error: no agent answered; the inner one: the agent's refusal, in its words.
    pub fn relay(
        &self,
        record: &RelayRecord,
        fds: &[RawFd],
    ) -> io::Result<std::result::Result<(), String>> {
        let request = Request::Relay(Box::new(record.clone()));
        let reply: Reply<RelayRecord> = self.exchange(&request, fds)?;
        Ok(reply.into_result().map(drop))
    }

    pub fn drop_relay(&self, key: &str) -> io::Result<()> {
        self.call::<RelayRecord>(
            &Request::DropRelay {
                key: key.to_owned(),
            },
            &[],
        )
        .map(drop)
    }

    /// The relays the agent holds now.
    pub fn relays(&self) -> io::Result<Vec<RelayRecord>> {
        self.call(&Request::Relays, &[]).map(|r| r.held)
    }

    /// The relay the agent holds in the namespace `ns`, if any (doctor's question).
    pub fn relay_in(&self, ns: &Netns) -> Option<RelayRecord> {
        let inode = ns.inode().ok()?;
        self.relays()
            .ok()?
            .into_iter()
            .find(|r| r.attachment.netns_inode == inode)
    }

    /// One request, its refusal an error.
    pub fn call<T: DeserializeOwned>(
        &self,
        request: &Request,
        fds: &[RawFd],
    ) -> io::Result<Reply<T>> {
        self.exchange::<Reply<T>>(request, fds)?
            .into_result()
            .map_err(io::Error::other)
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
        (&stream).take(MAX_MESSAGE as u64).read_to_end(&mut reply)?;
        serde_json::from_slice(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
