//! `Rtnl` over rtnetlink: netlink-packet-route messages on a connection opened inside the
//! target namespace (the socket keeps working there from anywhere, as netavark does), driven
//! by the process's one runtime (sys::runtime), shared by every connection. Requests ask for strict checking, so gets are filtered by the kernel; every
//! exchange has a deadline; refusals keep errno and extended-ack message.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use rtnetlink::sys::{AsyncSocket, SocketAddr, TokioSocket};
use rtnetlink::Handle;
use tokio::runtime::Runtime;

use super::codec::{
    address_flags_of, address_of, ext_ack, link_of, macvlan_message, message_of, route_of,
};
use super::{Error, Family, Link, NewMacvlan, Op, Result, RouteEntry, Rtnl};
use crate::sys::netns::Netns;

/// How long the kernel may take to answer one exchange before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime a connection's exchanges run on.
enum Driver {
    /// The process's one runtime.
    Process(&'static Runtime),
    /// A forked child's own (`Netlink::for_child`).
    Child(Box<Runtime>),
}

impl std::ops::Deref for Driver {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        match self {
            Driver::Process(rt) => rt,
            Driver::Child(rt) => rt,
        }
    }
}

fn process_runtime() -> Result<Driver> {
    crate::sys::runtime::process()
        .map(Driver::Process)
        .map_err(|detail| Error::Connection {
            what: "start the netlink runtime".into(),
            detail,
        })
}

type Unsolicited = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A netlink connection into one namespace.
pub struct Netlink {
    rt: Driver,
    handle: Handle,
    /// The socket, for a forked child to talk on (`for_child`).
    fd: RawFd,
    /// Kept open: the connection stops when nobody listens for what the kernel sends unasked.
    _unsolicited: Unsolicited,
}

impl Netlink {
    /// Opens a connection inside `ns`; it keeps working in that namespace from anywhere.
    pub fn connect(ns: &Netns) -> Result<Netlink> {
        let rt = process_runtime()?;
        let opened = ns
            .run(|| {
                let _context = rt.enter();
                open()
            })
            .map_err(|e| Error::Namespace(e.to_string()))?;
        Netlink::start(rt, opened, ns.path())
    }

    /// Opens a connection in the namespace the plugin runs in.
    pub fn here() -> Result<Netlink> {
        let rt = process_runtime()?;
        let opened = {
            let _context = rt.enter();
            open()
        };
        Netlink::start(rt, opened, "the plugin's namespace")
    }

    fn start(rt: Driver, opened: std::io::Result<Opened>, ns: &str) -> Result<Netlink> {
        let (connection, handle, unsolicited, fd) = opened.map_err(|source| Error::Socket {
            ns: ns.to_owned(),
            source,
        })?;
        rt.spawn(connection);
        Ok(Netlink {
            rt,
            handle,
            fd,
            _unsolicited: unsolicited,
        })
    }

    /// A connection for a forked child on the same socket, with a runtime of its own: the
    /// parent's runtime shares its epoll instance with the child, and the parent tears it
    /// down when it exits.
    pub fn for_child(&self) -> Result<Netlink> {
        let rt = crate::sys::runtime::build().map_err(|e| Error::Connection {
            what: "start the forked child's netlink runtime".into(),
            detail: e.to_string(),
        })?;
        let rt = Driver::Child(Box::new(rt));
        let opened = {
            let _context = rt.enter();
            nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) })
                .map_err(std::io::Error::from)
                .map(|fd| {
                    use std::os::fd::IntoRawFd;
                    // SAFETY: a fresh descriptor owned by nobody else.
                    let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
                    let fd = socket.as_raw_fd();
                    let (mut connection, handle, unsolicited) = rtnetlink::from_socket(socket);
                    see_the_end(&mut connection);
                    (connection, handle, unsolicited, fd)
                })
        };
        Netlink::start(rt, opened, "the forked child")
    }

    /// Runs one exchange to its end or to the deadline.
    fn run<T>(&self, what: &str, exchange: impl Future<Output = Result<T>>) -> Result<T> {
        let deadline = async { tokio::time::timeout(TIMEOUT, exchange).await };
        // Never from a task of the runtime itself: the agent runs its netlink work on the
        // runtime's blocking pool (tokio would panic here rather than deadlock). On another
        // thread than the one driving the runtime, block_on waits for that one to drive it.
        self.rt.block_on(deadline).unwrap_or_else(|_| {
            Err(Error::Timeout {
                what: what.to_owned(),
            })
        })
    }

    /// Sends one request; its answers come through the stream.
    fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + use<>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        self.handle
            .clone()
            .request(request)
            .map_err(|e| Error::Connection {
                what: what.to_owned(),
                detail: e.to_string(),
            })
    }

    /// One request and the messages that answer it (all of a dump, the one reply of a get,
    /// nothing for an acknowledged change).
    fn query(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let answers = self.send(message, flags, what)?;
        self.run(what, answers_of(answers, what))
    }

    fn one_link(&self, message: LinkMessage, what: &str) -> Result<Option<Link>> {
        let answers = self.query(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST, what);
        match answers {
            Ok(answers) => Ok(answers.into_iter().find_map(link_of)),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

type Opened = (
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    Handle,
    Unsolicited,
    RawFd,
);

/// Opens the socket in the current namespace, registered with the entered runtime.
fn open() -> std::io::Result<Opened> {
    let (mut connection, handle, unsolicited) = rtnetlink::new_connection_with_strict_check()?;
    see_the_end(&mut connection);
    let socket = connection.socket_mut().socket_mut();
    // The kernel's reason for a refusal, where it gives one.
    socket.set_ext_ack(true)?;
    let fd = socket.as_raw_fd();
    Ok((connection, handle, unsolicited, fd))
}

/// Passes acknowledgements and ends of dumps on, so an exchange ends on the kernel's word
/// rather than on a connection that closed.
fn see_the_end(connection: &mut rtnetlink::proto::Connection<RouteNetlinkMessage>) {
    connection.set_forward_ack(true);
    connection.set_forward_done(true);
}

/// Reads the answers to one request until the kernel says it is done: the messages, or the
/// refusal.
async fn answers_of(
    answers: impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>> {
    let mut answers = std::pin::pin!(answers);
    let mut out = Vec::new();
    while let Some(message) = answers.next().await {
        let flags = message.header.flags;
        match message.payload {
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                if flags & NLM_F_MULTIPART == 0 {
                    return Ok(out);
                }
            }
            NetlinkPayload::Error(e) => match e.code {
                None => return Ok(out),
                Some(code) => {
                    return Err(Error::Refused {
                        what: what.to_owned(),
                        errno: Errno::from_raw(-code.get()),
                        ext_ack: ext_ack(flags, &e.header),
                    })
                }
            },
            NetlinkPayload::Done(_) => return Ok(out),
            NetlinkPayload::Overrun(_) => {
                return Err(Error::Connection {
                    what: what.to_owned(),
                    detail: "the kernel's answer overran the socket buffer".into(),
                })
            }
            _ => {}
        }
    }
    Err(Error::Connection {
        what: what.to_owned(),
        detail: "the connection closed before the kernel answered".into(),
    })
}

impl Rtnl for Netlink {
    fn links(&self) -> Result<Vec<Link>> {
        let answers = self.query(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list links",
        )?;
        Ok(answers.into_iter().filter_map(link_of).collect())
    }

    fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        self.one_link(message, &format!("look up link {name}"))
    }

    fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.one_link(message, &format!("look up link {index}"))
    }

    fn link_elsewhere(&self, nsid: i32, index: u32) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        // IFLA_TARGET_NETNSID (named IFLA_IF_NETNSID in the crate, the kernel's old name).
        message.attributes.push(LinkAttribute::IfNetnsId(nsid));
        self.one_link(
            message,
            &format!("look up link {index} of namespace {nsid}"),
        )
    }

    fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        let mut message = AddressMessage::default();
        // Strict checking: the kernel lists only this link's addresses.
        message.header.index = index.unwrap_or(0);
        let answers = self.query(
            RouteNetlinkMessage::GetAddress(message),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list addresses",
        )?;
        Ok(answers.into_iter().filter_map(address_of).collect())
    }

    fn ipv6_address_flags(&self, index: u32) -> Result<Vec<(IpNetwork, AddressFlags)>> {
        let mut message = AddressMessage::default();
        // Strict checking: the kernel lists only this link's IPv6 addresses.
        message.header.family = AddressFamily::Inet6;
        message.header.index = index;
        let answers = self.query(
            RouteNetlinkMessage::GetAddress(message),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list IPv6 addresses",
        )?;
        Ok(answers.into_iter().filter_map(address_flags_of).collect())
    }

    fn routes(&self, family: Family, table: u32) -> Result<Vec<RouteEntry>> {
        let mut message = RouteMessage::default();
        message.header.address_family = match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        // Strict checking: the kernel lists only this table's routes.
        message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        message.attributes.push(RouteAttribute::Table(table));
        let answers = self.query(
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list routes",
        );
        match answers {
            Ok(answers) => Ok(answers.into_iter().filter_map(route_of).collect()),
            // A table nothing was ever put in does not exist yet.
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn routes_through(&self, family: Family, index: u32) -> Result<Vec<RouteEntry>> {
        let mut message = RouteMessage::default();
        message.header.address_family = match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        // Strict checking with no table and an output device: the kernel lists every
        // table's routes that use the device (fib_info_nh_uses_dev, fib6_info_uses_dev).
        message.header.table = RouteHeader::RT_TABLE_UNSPEC;
        message.attributes.push(RouteAttribute::Oif(index));
        let answers = self.query(
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST | NLM_F_DUMP,
            &format!("list the routes through link {index}"),
        )?;
        Ok(answers.into_iter().filter_map(route_of).collect())
    }

    fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()> {
        self.query(
            RouteNetlinkMessage::NewLink(macvlan_message(spec)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            "create macvlan",
        )
        .map(drop)
    }

    fn child_connection(&self) -> Result<Box<dyn Rtnl>> {
        Ok(Box::new(self.for_child()?))
    }

    /// Sends every op before reading any answer (the kernel handles them in order, so a
    /// step costs one round trip), then reads all the answers.
    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let what = first.describe();
        let mut pending = Vec::with_capacity(ops.len());
        for op in ops {
            let (message, flags) = message_of(&op);
            let answers = self.send(message, flags, &op.describe())?;
            pending.push((op, answers));
        }
        self.run(&what, async move {
            let mut failure = None;
            for (op, answers) in pending {
                match answers_of(answers, &op.describe()).await {
                    Err(e) if e.errno().is_some_and(|n| op.already().contains(&n)) => {}
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                    Ok(_) => {}
                }
            }
            failure.map_or(Ok(()), Err)
        })
    }
}
