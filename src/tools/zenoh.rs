//! Zenoh's multicast scouting, as much of it as `probe` and `doctor` need to say who scouts
//! on a pod's interface: the Scout a session multicasts to 224.0.0.224:7446 and the Hello a
//! peer or router answers with (Zenoh 1.x, protocol version 9). Nothing of Zenoh's sessions
//! or data. Decoding is total: any byte string gives a value or an error, never a panic.

use std::fmt;
use std::net::Ipv4Addr;

/// Where Zenoh sessions scout by default (`scouting/multicast/address`).
pub const SCOUT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 224);
pub const SCOUT_PORT: u16 = 7446;
/// The protocol version Zenoh 1.x speaks (0x09).
pub const PROTOCOL_VERSION: u8 = 0x09;

const MID_MASK: u8 = 0x1f;
const ID_SCOUT: u8 = 0x01;
const ID_HELLO: u8 = 0x02;
/// Header flags: L (Hello: locators follow), Z (extensions follow).
const FLAG_L: u8 = 0x20;
const FLAG_Z: u8 = 0x80;
/// Scout's flags byte: I (a Zenoh ID follows).
const SCOUT_FLAG_I: u8 = 0x08;

/// What a Zenoh session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Router,
    Peer,
    Client,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Router => "router",
            Role::Peer => "peer",
            Role::Client => "client",
        })
    }
}

/// A Zenoh ID as Zenoh prints it: the bytes as one little-endian number, in hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ZenohId(pub Vec<u8>);

impl fmt::Display for ZenohId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0.iter().rev().map(|b| format!("{b:02x}")).collect();
        f.write_str(hex.trim_start_matches('0'))
    }
}

/// "Who is there?": sent to the scouting group by a session looking for `looking_for`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scout {
    pub version: u8,
    pub looking_for: Vec<Role>,
    pub zid: Option<ZenohId>,
}

/// "Here I am": a session's answer to a Scout, sent to the scout's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub role: Role,
    pub zid: ZenohId,
    /// Where the session listens, as Zenoh writes endpoints (`tcp/198.51.100.160:7447`).
    pub locators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Scout(Scout),
    Hello(Hello),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Truncated,
    NotScouting(u8),
    BadRole(u8),
    BadLocator,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated scouting message"),
            Error::NotScouting(h) => write!(f, "header {h:#04x} is neither Scout nor Hello"),
            Error::BadRole(b) => write!(f, "unknown role bits in {b:#04x}"),
            Error::BadLocator => f.write_str("locator is not UTF-8"),
        }
    }
}

impl std::error::Error for Error {}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self.0.split_first().ok_or(Error::Truncated)?;
        self.0 = rest;
        Ok(b)
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Truncated);
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    /// Zenoh's variable-length integer (LEB128, at most 9 bytes for 64 bits).
    fn zint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = self.byte()?;
            if i == 8 {
                return Ok(v | (u64::from(b) << 56));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Ok(v)
    }
    fn length(&mut self) -> Result<usize, Error> {
        usize::try_from(self.zint()?).map_err(|_| Error::Truncated)
    }
    /// Extensions the decoder does not need: each is a header (its encoding in bits 5-6,
    /// another extension following when bit 7 is set) and a body of that encoding.
    fn skip_extensions(&mut self) -> Result<(), Error> {
        loop {
            let header = self.byte()?;
            match (header >> 5) & 0b11 {
                0b00 => {}
                0b01 => {
                    self.zint()?;
                }
                _ => {
                    let n = self.length()?;
                    self.bytes(n)?;
                }
            }
            if header & 0x80 == 0 {
                return Ok(());
            }
        }
    }
}

/// Decodes one scouting datagram.
pub fn decode(datagram: &[u8]) -> Result<Message, Error> {
    let mut r = Reader(datagram);
    let header = r.byte()?;
    let message = match header & MID_MASK {
        ID_SCOUT => {
            let version = r.byte()?;
            let flags = r.byte()?;
            let zid = if flags & SCOUT_FLAG_I != 0 {
                Some(ZenohId(r.bytes(1 + usize::from(flags >> 4))?.to_vec()))
            } else {
                None
            };
            let looking_for = [(1, Role::Router), (2, Role::Peer), (4, Role::Client)]
                .into_iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, role)| role)
                .collect();
            Message::Scout(Scout {
                version,
                looking_for,
                zid,
            })
        }
        ID_HELLO => {
            let version = r.byte()?;
            let flags = r.byte()?;
            let role = match flags & 0b11 {
                0b00 => Role::Router,
                0b01 => Role::Peer,
                0b10 => Role::Client,
                _ => return Err(Error::BadRole(flags)),
            };
            let zid = ZenohId(r.bytes(1 + usize::from(flags >> 4))?.to_vec());
            let mut locators = Vec::new();
            if header & FLAG_L != 0 {
                for _ in 0..r.length()? {
                    let n = r.length()?;
                    let text = std::str::from_utf8(r.bytes(n)?).map_err(|_| Error::BadLocator)?;
                    locators.push(text.to_owned());
                }
            }
            Message::Hello(Hello {
                version,
                role,
                zid,
                locators,
            })
        }
        _ => return Err(Error::NotScouting(header)),
    };
    if header & FLAG_Z != 0 {
        r.skip_extensions()?;
    }
    Ok(message)
}

/// A Scout looking for routers and peers, with no Zenoh ID: what `probe` sends so that
/// listening sessions answer with a Hello at once.
pub fn encode_scout() -> Vec<u8> {
    vec![ID_SCOUT, PROTOCOL_VERSION, 0b011]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with tcpdump in a test namespace from the eclipse-zenoh 1.10.2 wheel: the
    /// Scout a peer multicasts (for routers, peers and clients, no Zenoh ID).
    const PEER_SCOUT: &[u8] = &[0x01, 0x09, 0x07];

    /// A router (zid 39743e24e637bfd1013839c26e659e63, listening on two endpoints)
    /// answering that Scout.
    const ROUTER_HELLO: &[u8] = &[
        0x22, 0x09, 0xf0, 0x63, 0x9e, 0x65, 0x6e, 0xc2, 0x39, 0x38, 0x01, 0xd1, 0xbf, 0x37, 0xe6,
        0x24, 0x3e, 0x74, 0x39, 0x02, 0x12, 0x74, 0x63, 0x70, 0x2f, 0x31, 0x32, 0x37, 0x2e, 0x30,
        0x2e, 0x30, 0x2e, 0x31, 0x3a, 0x37, 0x34, 0x34, 0x37, 0x0e, 0x74, 0x63, 0x70, 0x2f, 0x5b,
        0x3a, 0x3a, 0x31, 0x5d, 0x3a, 0x37, 0x34, 0x34, 0x37,
    ];

    /// A peer (zid 81715841a1300118bd40b4b7f376798c) answering: one locator.
    const PEER_HELLO: &[u8] = &[
        0x22, 0x09, 0xf1, 0x8c, 0x79, 0x76, 0xf3, 0xb7, 0xb4, 0x40, 0xbd, 0x18, 0x01, 0x30, 0xa1,
        0x41, 0x58, 0x71, 0x81, 0x01, 0x13, 0x74, 0x63, 0x70, 0x2f, 0x31, 0x32, 0x37, 0x2e, 0x30,
        0x2e, 0x30, 0x2e, 0x31, 0x3a, 0x34, 0x36, 0x36, 0x39, 0x31,
    ];

    #[test]
    fn a_captured_scout_looks_for_everyone() {
        assert_eq!(
            decode(PEER_SCOUT).unwrap(),
            Message::Scout(Scout {
                version: 9,
                looking_for: vec![Role::Router, Role::Peer, Role::Client],
                zid: None,
            })
        );
    }

    fn hello(datagram: &[u8]) -> Hello {
        match decode(datagram) {
            Ok(Message::Hello(h)) => h,
            other => panic!("not a Hello: {other:?}"),
        }
    }

    #[test]
    fn a_captured_router_hello_gives_its_id_and_locators() {
        let h = hello(ROUTER_HELLO);
        assert_eq!(h.role, Role::Router);
        assert_eq!(h.zid.to_string(), "39743e24e637bfd1013839c26e659e63");
        assert_eq!(h.locators, ["tcp/127.0.0.1:7447", "tcp/[::1]:7447"]);
    }

    #[test]
    fn a_captured_peer_hello() {
        let h = hello(PEER_HELLO);
        assert_eq!(h.role, Role::Peer);
        assert_eq!(h.zid.to_string(), "81715841a1300118bd40b4b7f376798c");
        assert_eq!(h.locators, ["tcp/127.0.0.1:46691"]);
    }

    #[test]
    fn our_scout_decodes_as_one_for_routers_and_peers() {
        assert_eq!(
            decode(&encode_scout()).unwrap(),
            Message::Scout(Scout {
                version: PROTOCOL_VERSION,
                looking_for: vec![Role::Router, Role::Peer],
                zid: None,
            })
        );
    }

    #[test]
    fn a_scout_with_an_id_and_an_extension() {
        // flags: peer, I, a 2-byte ID; then a unit extension (Z set on the header).
        let m = decode(&[0x81, 0x09, 0x1a, 0x34, 0x12, 0x01]).unwrap();
        let Message::Scout(s) = m else {
            panic!("not a Scout")
        };
        assert_eq!(s.looking_for, [Role::Peer]);
        assert_eq!(s.zid.unwrap().to_string(), "1234");
    }

    #[test]
    fn every_truncation_and_other_traffic_is_an_error_not_a_panic() {
        for packet in [PEER_SCOUT, ROUTER_HELLO, PEER_HELLO] {
            for n in 0..packet.len() {
                let cut = &packet[..n];
                // A Scout's body is complete at 3 bytes; shorter ones fail.
                assert!(decode(cut).is_err(), "{cut:02x?} decoded");
            }
        }
        // An RTPS datagram (SPDP starts with "RTPS") is no scouting message.
        assert_eq!(decode(b"RTPS\x02\x03"), Err(Error::NotScouting(b'R')));
        // Role bits 0b11 mean nothing.
        assert_eq!(decode(&[0x02, 0x09, 0x03, 0]), Err(Error::BadRole(0x03)));
        // A locator count far beyond the datagram.
        assert_eq!(
            decode(&[0x22, 0x09, 0x00, 0x01, 0xff, 0xff, 0x03]),
            Err(Error::Truncated)
        );
    }
}
