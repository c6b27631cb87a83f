//! The rtnetlink wire format, for the few messages the plugin sends and reads: a message
//! is a 16-byte header, a fixed part (ifinfomsg, ifaddrmsg or rtmsg), then attributes
//! (type-length-value, 4-byte aligned, possibly nested). Values are in host byte order
//! except addresses, as the kernel's uapi headers say (linux/netlink.h, linux/rtnetlink.h,
//! linux/if_link.h, linux/if_addr.h).
//!
//! Written here rather than taken from a general crate: those model every attribute of
//! every message kind, and that code, mapped into each short-lived plugin process, was
//! most of its memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Link;

// Message types.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;

// Header flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On an error reply: extended-ack attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// On an error reply: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_MSG: u16 = 1;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

// Link attributes and what nests in them.
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_IFALIAS: u16 = 20;
pub const IFLA_AF_SPEC: u16 = 26;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_MACVLAN_MODE: u16 = 1;
pub const IFLA_MACVLAN_BC_QUEUE_LEN: u16 = 7;
pub const IFLA_INET_CONF: u16 = 1;

// Address attributes.
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;

// Route attributes.
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_TABLE: u16 = 15;

/// A message being built: header and fixed part first, attributes appended.
pub struct MessageBuilder {
    buf: Vec<u8>,
    open_nests: Vec<usize>,
}

impl MessageBuilder {
    pub fn new(message_type: u16, fixed: &[u8]) -> MessageBuilder {
        let mut buf = vec![0; 16];
        buf[4..6].copy_from_slice(&message_type.to_ne_bytes());
        buf.extend_from_slice(fixed);
        MessageBuilder {
            buf,
            open_nests: Vec::new(),
        }
    }

    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string, as the kernel wants names and kinds.
    pub fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    pub fn ip(&mut self, kind: u16, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(a) => self.attr(kind, &a.octets()),
            IpAddr::V6(a) => self.attr(kind, &a.octets()),
        }
    }

    /// Opens a nested attribute; the attributes until `end_nest` go inside it.
    pub fn begin_nest(&mut self, kind: u16) -> &mut Self {
        self.open_nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nest(&mut self) -> &mut Self {
        let start = self.open_nests.pop().expect("end_nest without begin_nest");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// The finished message, with its flags and sequence number.
    pub fn finish(&self, flags: u16, seq: u32) -> Vec<u8> {
        assert!(self.open_nests.is_empty(), "unclosed nested attribute");
        let mut buf = self.buf.clone();
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf
    }
}

/// ifinfomsg: family, type, index, flags, change mask.
pub fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// ifaddrmsg: family, prefix length, flags, scope, index.
pub fn ifaddrmsg(family: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut m = [family, prefix, 0, 0, 0, 0, 0, 0];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// rtmsg: family, destination length, source length, tos, table, protocol, scope, type, flags.
pub struct RouteHeader {
    pub family: u8,
    pub dst_len: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
}

impl RouteHeader {
    pub fn bytes(&self) -> [u8; 12] {
        [
            self.family,
            self.dst_len,
            0,
            0,
            self.table,
            self.protocol,
            self.scope,
            self.kind,
            0,
            0,
            0,
            0,
        ]
    }

    fn parse(b: &[u8]) -> Option<RouteHeader> {
        (b.len() >= 12).then(|| RouteHeader {
            family: b[0],
            dst_len: b[1],
            table: b[4],
            protocol: b[5],
            scope: b[6],
            kind: b[7],
        })
    }
}

/// One message read from the kernel.
pub struct Received<'a> {
    pub kind: u16,
    pub seq: u32,
    flags: u16,
    body: &'a [u8],
}

/// Splits a datagram into its messages; a malformed tail is dropped.
pub fn messages(mut datagram: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    while datagram.len() >= 16 {
        let len = u32_at(datagram, 0) as usize;
        if len < 16 || len > datagram.len() {
            break;
        }
        out.push(Received {
            kind: u16_at(datagram, 4),
            flags: u16_at(datagram, 6),
            seq: u32_at(datagram, 8),
            body: &datagram[16..len],
        });
        datagram = &datagram[len.next_multiple_of(4).min(datagram.len())..];
    }
    out
}

impl<'a> Received<'a> {
    /// For NLMSG_ERROR: 0 for an acknowledgement, else the errno, with the kernel's
    /// explanation when it gave one (extended ack).
    pub fn error(&self) -> Option<(i32, Option<String>)> {
        if self.kind != NLMSG_ERROR || self.body.len() < 4 {
            return None;
        }
        let code = -(u32_at(self.body, 0) as i32);
        let mut explanation = None;
        if self.flags & NLM_F_ACK_TLVS != 0 && self.body.len() >= 20 {
            let echoed = if self.flags & NLM_F_CAPPED != 0 {
                16
            } else {
                (u32_at(self.body, 4) as usize).next_multiple_of(4)
            };
            if let Some(tlvs) = self.body.get(4 + echoed..) {
                explanation = attributes(tlvs)
                    .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
                    .map(|(_, v)| c_string(v));
            }
        }
        Some((code, explanation))
    }

    /// The fixed part and attributes of a link, address or route message.
    fn split(&self, fixed: usize) -> Option<(&'a [u8], &'a [u8])> {
        (self.body.len() >= fixed).then(|| self.body.split_at(fixed))
    }

    pub fn link(&self) -> Option<Link> {
        if self.kind != RTM_NEWLINK {
            return None;
        }
        let (head, attrs) = self.split(16)?;
        let mut link = Link {
            index: u32_at(head, 4),
            flags: u32_at(head, 8),
            ..Link::default()
        };
        for (kind, value) in attributes(attrs) {
            match kind {
                IFLA_IFNAME => link.name = c_string(value),
                IFLA_ADDRESS => link.mac = value.to_vec(),
                IFLA_MTU if value.len() >= 4 => link.mtu = u32_at(value, 0),
                IFLA_IFALIAS => link.alias = Some(c_string(value)),
                IFLA_LINKINFO => {
                    for (k, v) in attributes(value) {
                        match k {
                            IFLA_INFO_KIND => link.kind = Some(c_string(v)),
                            IFLA_INFO_DATA => {
                                link.macvlan_mode = attributes(v)
                                    .find(|(k, v)| *k == IFLA_MACVLAN_MODE && v.len() >= 4)
                                    .map(|(_, v)| u32_at(v, 0));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(link)
    }

    /// An address: link index and address with prefix length.
    pub fn address(&self) -> Option<(u32, IpAddr, u8)> {
        if self.kind != RTM_NEWADDR {
            return None;
        }
        let (head, attrs) = self.split(8)?;
        let (mut local, mut peer) = (None, None);
        for (kind, value) in attributes(attrs) {
            match kind {
                IFA_LOCAL => local = ip_of(head[0], value),
                IFA_ADDRESS => peer = ip_of(head[0], value),
                _ => {}
            }
        }
        Some((u32_at(head, 4), local.or(peer)?, head[1]))
    }

    /// A route: its header and destination, gateway, output interface and table.
    pub fn route(&self) -> Option<RouteRead> {
        if self.kind != RTM_NEWROUTE {
            return None;
        }
        let (head, attrs) = self.split(12)?;
        let header = RouteHeader::parse(head)?;
        let mut route = RouteRead {
            table: u32::from(header.table),
            header,
            dst: None,
            gateway: None,
            oif: None,
        };
        for (kind, value) in attributes(attrs) {
            match kind {
                RTA_DST => route.dst = ip_of(route.header.family, value),
                RTA_GATEWAY => route.gateway = ip_of(route.header.family, value),
                RTA_OIF if value.len() >= 4 => route.oif = Some(u32_at(value, 0)),
                RTA_TABLE if value.len() >= 4 => route.table = u32_at(value, 0),
                _ => {}
            }
        }
        Some(route)
    }
}

pub struct RouteRead {
    pub header: RouteHeader,
    pub dst: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
}

/// The attributes in `buf`, as (type, value); nested ones are parsed again by the caller.
pub fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16_at(buf, 0) as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        let item = (u16_at(buf, 2) & NLA_TYPE_MASK, &buf[4..len]);
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(item)
    })
}

fn ip_of(family: u8, value: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(value)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        AF_INET6 => <[u8; 16]>::try_from(value)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut m = MessageBuilder::new(RTM_NEWLINK, &ifinfomsg(7, 1, 0));
        m.str(IFLA_IFNAME, "net1")
            .begin_nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "macvlan")
            .begin_nest(IFLA_INFO_DATA)
            .u32(IFLA_MACVLAN_MODE, 4)
            .end_nest()
            .end_nest()
            .u32(IFLA_MTU, 1400);
        let bytes = m.finish(NLM_F_REQUEST, 9);
        assert_eq!(bytes.len() % 4, 0);
        let got = messages(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 9);
        let link = got[0].link().expect("a link message");
        assert_eq!(
            (link.index, link.flags, link.name.as_str(), link.mtu),
            (7, 1, "net1", 1400)
        );
        assert_eq!(link.kind.as_deref(), Some("macvlan"));
        assert_eq!(link.macvlan_mode, Some(4));
    }

    #[test]
    fn error_replies_carry_code_and_kernel_message() {
        // NLMSG_ERROR, capped, with an extended-ack message.
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&MessageBuilder::new(RTM_NEWLINK, &[]).finish(0, 3)[..16]);
        let mut m = MessageBuilder::new(NLMSG_ERROR, &body);
        m.str(NLMSGERR_ATTR_MSG, "Invalid MTU");
        let bytes = m.finish(NLM_F_CAPPED | NLM_F_ACK_TLVS, 3);
        let got = messages(&bytes);
        assert_eq!(got[0].error(), Some((22, Some("Invalid MTU".into()))));
        let ack = MessageBuilder::new(NLMSG_ERROR, &[0; 20]).finish(0, 4);
        assert_eq!(messages(&ack)[0].error(), Some((0, None)));
    }

    #[test]
    fn truncated_input_is_not_read_past() {
        let bytes = MessageBuilder::new(RTM_NEWADDR, &ifaddrmsg(AF_INET, 24, 3)).finish(0, 1);
        assert!(messages(&bytes[..10]).is_empty());
        let mut long = bytes.clone();
        long[0] = 200; // claims more than there is
        assert!(messages(&long).is_empty());
        assert!(attributes(&[8, 0, 1, 0, 1]).next().is_none());
    }
}
