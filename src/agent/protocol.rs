//! What the plugin (and the operator's tools) ask of the node agent on its unix socket, and
//! what it answers: one JSON line each way per connection, with the descriptors a request
//! hands over (the membership socket, the relay's listeners) passed along (SCM_RIGHTS) on
//! its first bytes.

use std::io::{self, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::agent::records::{MembershipRecord, RelayRecord};

/// How long ADD and DEL wait for the agent at most: a pod start is never held up longer.
pub const AGENT_WAIT: Duration = Duration::from_millis(1000);

/// A request is one JSON line shorter than this (its newline included); anything longer is
/// not ours.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The longest reply a client reads. A whole listing grows with the node (about 600 bytes a
/// membership: 110 attachments fill `MAX_MESSAGE`), so the plugin and doctor ask only for
/// one namespace's (`HeldIn`, `RelaysIn`); whole listings are for the operator's tools and
/// tests, and `budget::MAX_HELD` of typical records fit in this.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Every request the agent answers, tagged by its name (`{"hold": {...}}`, `"list"`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    /// Hold the socket passed with this message (SCM_RIGHTS) for this attachment; ADD's
    /// report for the agent's metrics (absent from plugins of earlier versions).
    Hold {
        #[serde(flatten)]
        record: Box<MembershipRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<CallReport>,
    },
    /// Let go of the attachment's socket: its memberships end (the IGMP leave goes out);
    /// DEL's report, likewise.
    Drop {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<CallReport>,
    },
    /// The memberships held now.
    List,
    /// The memberships held now for attachments in the namespace of this inode (CHECK's and
    /// doctor's question, whose reply stays small however many pods the node has).
    #[serde(rename_all = "camelCase")]
    HeldIn { netns_inode: u64 },
    /// Relay the listening sockets passed with this message (SCM_RIGHTS, in `listen`'s order).
    Relay(Box<RelayRecord>),
    /// Close the attachment's listeners and its connections.
    DropRelay { key: String },
    /// The relays held now.
    Relays,
    /// The relays held now for attachments in the namespace of this inode.
    #[serde(rename_all = "camelCase")]
    RelaysIn { netns_inode: u64 },
}

/// What a plugin call tells the agent of itself when it hands over (ADD) or lets go (DEL),
/// for the agent's metrics: the call's time so far (the hand-over comes at its end) and
/// the ARP frames it sent for duplicate detection. The network is the attachment's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallReport {
    pub seconds: f64,
    #[serde(default)]
    pub arp_frames: u64,
}

impl CallReport {
    /// This process's report, when it is a plugin call (`cni::skel` started its clock).
    pub fn of_this_call() -> Option<CallReport> {
        Some(CallReport {
            seconds: crate::cni::skel::call_elapsed()?.as_secs_f64(),
            arp_frames: crate::node::duplicate::arp_frames_sent(),
        })
    }
}

impl Request {
    /// Parses a complete request line.
    pub fn parse(line: &[u8]) -> io::Result<Request> {
        serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// The request in what a client sent on its connection (`receive_chunk`'s bytes, as many
/// as the agent read): its first line, which with its newline must be shorter than
/// `MAX_MESSAGE`; whatever follows the newline is not read. A line that does not end
/// within `MAX_MESSAGE` is refused however the client's bytes arrived.
pub fn decode_request(received: &[u8]) -> io::Result<Request> {
    let line = received.split(|b| *b == b'\n').next().unwrap_or(&[]);
    if line.len() + 1 >= MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a request is one line shorter than {MAX_MESSAGE} bytes"),
        ));
    }
    Request::parse(line)
}

/// The agent's one answer to every request: done or refused (and why), and what it holds,
/// of the kind asked (memberships, or relays).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply<T = MembershipRecord> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<T>,
}

impl<T> Reply<T> {
    /// Done (what is held, if asked, goes in `held`).
    pub fn accepted() -> Reply<T> {
        Reply {
            ok: true,
            error: None,
            held: Vec::new(),
        }
    }

    /// Not done, and why.
    pub fn refused(error: String) -> Reply<T> {
        Reply {
            ok: false,
            error: Some(error),
            ..Reply::accepted()
        }
    }

    /// The reply, or the agent's words for its refusal.
    pub fn into_result(self) -> std::result::Result<Reply<T>, String> {
        if self.ok {
            Ok(self)
        } else {
            Err(self.error.unwrap_or_else(|| "refused".into()))
        }
    }
}

/// Reads one request line from a connected stream, with any descriptors passed along.
/// Used by the agent on a non-blocking socket it has seen readable; returns what arrived.
pub fn receive_chunk(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just installed these descriptors for this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|r| unsafe { OwnedFd::from_raw_fd(r) }),
            );
        }
    }
    Ok(msg.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::records::tests::record;

    #[test]
    fn requests_are_one_json_line_each() {
        let hold = Request::Hold {
            record: Box::new(record()),
            report: None,
        };
        let line = serde_json::to_string(&hold).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            matches!(Request::parse(line.as_bytes()).unwrap(), Request::Hold { record: r, report: None } if *r == record())
        );
        assert!(matches!(
            Request::parse(br#"{"drop":{"key":"a:b:c"}}"#).unwrap(),
            Request::Drop { key, report: None } if key == "a:b:c"
        ));
        assert!(Request::parse(b"{\"hold\":").is_err());
    }

    #[test]
    fn reports_ride_along_and_old_requests_have_none() {
        // A hold as a plugin of an earlier version writes it: the record's fields alone.
        let old = serde_json::to_string(&record()).unwrap();
        let parsed = Request::parse(format!(r#"{{"hold":{old}}}"#).as_bytes()).unwrap();
        assert!(matches!(parsed, Request::Hold { report: None, .. }));
        let hold = Request::Hold {
            record: Box::new(record()),
            report: Some(CallReport {
                seconds: 0.012,
                arp_frames: 3,
            }),
        };
        let line = serde_json::to_string(&hold).unwrap();
        assert!(
            line.contains(r#""report":{"seconds":0.012,"arpFrames":3}"#),
            "{line}"
        );
        assert!(matches!(
            Request::parse(line.as_bytes()).unwrap(),
            Request::Hold { record: r, report: Some(CallReport { arp_frames: 3, .. }) } if *r == record()
        ));
        assert!(matches!(
            Request::parse(br#"{"drop":{"key":"a:b:c","report":{"seconds":0.5}}}"#).unwrap(),
            Request::Drop {
                report: Some(CallReport { arp_frames: 0, .. }),
                ..
            }
        ));
        // An agent of an earlier version (during an upgrade) reads the new hold as the
        // record it knows: the report is one more field it ignores.
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let earlier: MembershipRecord = serde_json::from_value(value["hold"].clone()).unwrap();
        assert_eq!(earlier, record());
    }

    #[test]
    fn relay_requests_keep_their_names_on_the_wire() {
        let line = serde_json::to_string(&Request::DropRelay {
            key: "a:b:c".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"dropRelay":{"key":"a:b:c"}}"#);
        assert!(matches!(
            Request::parse(line.as_bytes()).unwrap(),
            Request::DropRelay { key } if key == "a:b:c"
        ));
        assert!(matches!(
            Request::parse(br#""relays""#).unwrap(),
            Request::Relays
        ));
        assert!(Request::parse(br#"{"relays":{"key":"a:b:c"},"x":1}"#).is_err());
    }

    #[test]
    fn a_request_is_its_first_line_shorter_than_max_message() {
        assert!(matches!(
            decode_request(b"\"list\"\n{\"drop\":").unwrap(),
            Request::List
        ));
        assert!(matches!(
            decode_request(b"\"list\"").unwrap(),
            Request::List
        ));
        assert!(decode_request(b"").is_err());
        // Padded (JSON allows the spaces) to the bound: refused however it arrived.
        let padded = |len: usize| {
            let mut line = b"\"list\"".to_vec();
            line.resize(len, b' ');
            line.push(b'\n');
            line
        };
        assert!(decode_request(&padded(MAX_MESSAGE - 2)).is_ok());
        assert!(decode_request(&padded(MAX_MESSAGE - 1)).is_err());
        let unended = &padded(MAX_MESSAGE + 100)[..MAX_MESSAGE + 50];
        assert!(decode_request(unended).is_err());
    }
}
