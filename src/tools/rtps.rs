//! RTPS, as much of it as discovery needs: the port mapping, and SPDP participant
//! announcements (decode, and encode for `probe --announce`). Decoding is total: any byte
//! string gives a value or an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RTPS 2.x well-known port parameters (spec 9.6.1.1).
pub const PORT_BASE: u16 = 7400;
pub const DOMAIN_GAIN: u16 = 250;
pub const PARTICIPANT_GAIN: u16 = 2;
const D0: u16 = 0;
const D1: u16 = 10;
const D2: u16 = 1;
const D3: u16 = 11;
/// The highest domain whose ports fit in 16 bits.
pub const MAX_DOMAIN: u16 = 232;
pub const SPDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

/// The RTPS port mapping (spec 9.6.1.1): multicast ports per domain, unicast ports per
/// domain and participant.
fn multicast_port(domain: u16, offset: u16) -> u16 {
    PORT_BASE + DOMAIN_GAIN * domain + offset
}
/// Unicast ports grow with the participant id and can pass 65535 in high domains: u32.
fn unicast_port(domain: u16, participant: u16, offset: u16) -> u32 {
    u32::from(multicast_port(domain, offset)) + u32::from(PARTICIPANT_GAIN) * u32::from(participant)
}

pub fn discovery_multicast_port(domain: u16) -> u16 {
    multicast_port(domain, D0)
}
pub fn discovery_unicast_port(domain: u16, participant: u16) -> u32 {
    unicast_port(domain, participant, D1)
}
pub fn user_multicast_port(domain: u16) -> u16 {
    multicast_port(domain, D2)
}
pub fn user_unicast_port(domain: u16, participant: u16) -> u32 {
    unicast_port(domain, participant, D3)
}

/// How many participants per host `domain_ports` counts: a robot runs a handful of DDS
/// processes, rarely more than ten.
pub const USUAL_PARTICIPANTS: u16 = 10;

/// The ports a host's participants of `domain` usually use: both multicast ports and the
/// unicast ports of the first USUAL_PARTICIPANTS participants, lowest to highest.
pub fn domain_ports(domain: u16) -> std::ops::RangeInclusive<u32> {
    u32::from(discovery_multicast_port(domain))..=user_unicast_port(domain, USUAL_PARTICIPANTS - 1)
}

/// The domain whose discovery multicast port this is.
pub fn domain_of_port(port: u16) -> Option<u16> {
    let off = port.checked_sub(PORT_BASE)?;
    (off % DOMAIN_GAIN == D0).then_some(off / DOMAIN_GAIN)
}

/// The OMG's vendor ID table (DDSI-RTPS vendor IDs).
pub fn vendor_name(id: [u8; 2]) -> &'static str {
    match id {
        [0x01, 0x01] => "RTI Connext DDS",
        [0x01, 0x02] => "ADLINK OpenSplice DDS",
        [0x01, 0x03] => "OCI OpenDDS",
        [0x01, 0x04] => "MilSoft",
        [0x01, 0x05] => "Kongsberg InterCOM DDS",
        [0x01, 0x06] => "Twin Oaks CoreDX DDS",
        [0x01, 0x07] => "Lakota Technical Solutions",
        [0x01, 0x08] => "ICOUP Consulting",
        [0x01, 0x09] => "ETRI Diamond DDS",
        [0x01, 0x0a] => "RTI Connext DDS Micro",
        [0x01, 0x0b] => "ADLINK Vortex Cafe",
        [0x01, 0x0c] => "PrismTech",
        [0x01, 0x0d] => "ADLINK Vortex Lite",
        [0x01, 0x0e] => "Technicolor Qeo",
        [0x01, 0x0f] => "eProsima Fast DDS",
        [0x01, 0x10] => "Eclipse Cyclone DDS",
        [0x01, 0x11] => "GurumNetworks GurumDDS",
        [0x01, 0x12] => "Atostek RustDDS",
        [0x01, 0x13] => "Nanjing Zhenrong ZRDDS",
        [0x01, 0x14] => "S2E Software Systems Dust DDS",
        [0x00, 0x00] => "unknown",
        _ => "unregistered vendor",
    }
}

/// A transport locator: kind, port, address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Locator {
    pub kind: i32,
    pub port: u32,
    pub address: IpAddr,
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.kind {
            1 => "udp",
            2 => "udp6",
            4 => "tcp",
            8 => "tcp6",
            16 => "shm",
            _ => "other",
        };
        write!(f, "{transport}/{}:{}", self.address, self.port)
    }
}

/// One SPDP participant announcement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Participant {
    /// From the RTPS header; the participant GUID is this prefix plus entity 0x000001c1.
    pub guid_prefix: [u8; 12],
    pub vendor_id: [u8; 2],
    pub protocol_version: (u8, u8),
    /// PID_DOMAIN_ID when sent (optional in the spec: absent means the port's domain).
    pub domain_id: Option<u32>,
    pub default_unicast: Vec<Locator>,
    pub default_multicast: Vec<Locator>,
    pub metatraffic_unicast: Vec<Locator>,
    pub metatraffic_multicast: Vec<Locator>,
    /// PID_PARTICIPANT_LEASE_DURATION in seconds.
    pub lease_duration: Option<f64>,
    /// PID_ENTITY_NAME, or the ROS 2 enclave / node name where a vendor sends it there.
    pub name: Option<String>,
}

impl Participant {
    pub fn guid_prefix_hex(&self) -> String {
        self.guid_prefix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
    pub fn vendor(&self) -> &'static str {
        vendor_name(self.vendor_id)
    }
    /// Every locator it announced, all kinds.
    pub fn locators(&self) -> impl Iterator<Item = &Locator> {
        self.default_unicast
            .iter()
            .chain(&self.default_multicast)
            .chain(&self.metatraffic_unicast)
            .chain(&self.metatraffic_multicast)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    NotRtps,
    Truncated(&'static str),
    NoSpdp,
    BadParameter(u16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotRtps => write!(f, "not an RTPS message"),
            DecodeError::Truncated(what) => write!(f, "truncated {what}"),
            DecodeError::NoSpdp => write!(f, "no SPDP participant data in the message"),
            DecodeError::BadParameter(pid) => write!(f, "malformed parameter 0x{pid:04x}"),
        }
    }
}

const SUBMSG_DATA: u8 = 0x15;
const FLAG_LITTLE_ENDIAN: u8 = 0x01;
const FLAG_INLINE_QOS: u8 = 0x02;
const FLAG_DATA: u8 = 0x04;
pub const SPDP_WRITER: [u8; 4] = [0x00, 0x01, 0x00, 0xc2];
const SPDP_READER: [u8; 4] = [0x00, 0x01, 0x00, 0xc7];

const PID_SENTINEL: u16 = 0x0001;
const PID_PAD: u16 = 0x0000;
const PID_LEASE_DURATION: u16 = 0x0002;
const PID_DOMAIN_ID: u16 = 0x000f;
const PID_PROTOCOL_VERSION: u16 = 0x0015;
const PID_VENDORID: u16 = 0x0016;
const PID_DEFAULT_UNICAST_LOCATOR: u16 = 0x0031;
const PID_METATRAFFIC_UNICAST_LOCATOR: u16 = 0x0032;
const PID_METATRAFFIC_MULTICAST_LOCATOR: u16 = 0x0033;
const PID_DEFAULT_MULTICAST_LOCATOR: u16 = 0x0048;
const PID_PARTICIPANT_GUID: u16 = 0x0050;
const PID_BUILTIN_ENDPOINT_SET: u16 = 0x0058;
const PID_ENTITY_NAME: u16 = 0x0062;

/// Byte order of one submessage or parameter list.
#[derive(Clone, Copy)]
struct Order(bool);

impl Order {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.0 {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
}

/// Decodes the SPDP participant announcement (DATA(p)) of an RTPS message.
pub fn decode_spdp(msg: &[u8]) -> Result<Participant, DecodeError> {
    if msg.len() < 20 || &msg[0..4] != b"RTPS" {
        return Err(DecodeError::NotRtps);
    }
    let protocol_version = (msg[4], msg[5]);
    let vendor_id = [msg[6], msg[7]];
    let mut guid_prefix = [0u8; 12];
    guid_prefix.copy_from_slice(&msg[8..20]);
    let mut at = 20;
    while at + 4 <= msg.len() {
        let (id, flags) = (msg[at], msg[at + 1]);
        let order = Order(flags & FLAG_LITTLE_ENDIAN != 0);
        let len = usize::from(order.u16(&msg[at + 2..at + 4]));
        let body_start = at + 4;
        // Length 0 means "to the end of the message" (for the last submessage).
        let body_end = if len == 0 {
            msg.len()
        } else {
            body_start + len
        };
        if body_end > msg.len() {
            return Err(DecodeError::Truncated("submessage"));
        }
        let body = &msg[body_start..body_end];
        if id == SUBMSG_DATA
            && body.len() >= 20
            && body[8..12] == SPDP_WRITER
            && flags & FLAG_DATA != 0
        {
            let qos_offset = usize::from(order.u16(&body[2..4]));
            let mut p = 4 + qos_offset;
            if flags & FLAG_INLINE_QOS != 0 {
                p = skip_parameter_list(body, p, order)?;
            }
            if p + 4 > body.len() {
                return Err(DecodeError::Truncated("serialized payload"));
            }
            let little = match [body[p], body[p + 1]] {
                [0x00, 0x03] => true,  // PL_CDR_LE
                [0x00, 0x02] => false, // PL_CDR_BE
                _ => return Err(DecodeError::NoSpdp),
            };
            let mut part = Participant {
                guid_prefix,
                vendor_id,
                protocol_version,
                domain_id: None,
                default_unicast: vec![],
                default_multicast: vec![],
                metatraffic_unicast: vec![],
                metatraffic_multicast: vec![],
                lease_duration: None,
                name: None,
            };
            parse_parameters(&body[p + 4..], Order(little), &mut part)?;
            return Ok(part);
        }
        if len == 0 {
            break;
        }
        at = body_end;
    }
    Err(DecodeError::NoSpdp)
}

fn skip_parameter_list(b: &[u8], mut p: usize, order: Order) -> Result<usize, DecodeError> {
    loop {
        if p + 4 > b.len() {
            return Err(DecodeError::Truncated("inline QoS"));
        }
        let pid = order.u16(&b[p..]);
        let len = usize::from(order.u16(&b[p + 2..]));
        p += 4 + len;
        if pid == PID_SENTINEL {
            return Ok(p);
        }
    }
}

fn parse_parameters(b: &[u8], order: Order, part: &mut Participant) -> Result<(), DecodeError> {
    let mut p = 0;
    while p + 4 <= b.len() {
        // Bit 15 marks a vendor-specific PID (not the standard one with those low bits); bit 14
        // is must-understand, which does not change the meaning.
        let raw_pid = order.u16(&b[p..]);
        let pid = if raw_pid & 0x8000 != 0 {
            raw_pid
        } else {
            raw_pid & 0x3fff
        };
        let len = usize::from(order.u16(&b[p + 2..]));
        let v = b
            .get(p + 4..p + 4 + len)
            .ok_or(DecodeError::Truncated("parameter"))?;
        let need = |n: usize| {
            if v.len() >= n {
                Ok(())
            } else {
                Err(DecodeError::BadParameter(pid))
            }
        };
        match pid {
            PID_SENTINEL => return Ok(()),
            PID_PAD => {}
            PID_DOMAIN_ID => {
                need(4)?;
                part.domain_id = Some(order.u32(v));
            }
            PID_LEASE_DURATION => {
                need(8)?;
                let secs = order.u32(v) as i32;
                let frac = order.u32(&v[4..]);
                part.lease_duration = Some(f64::from(secs) + f64::from(frac) / 4_294_967_296.0);
            }
            PID_DEFAULT_UNICAST_LOCATOR
            | PID_METATRAFFIC_UNICAST_LOCATOR
            | PID_METATRAFFIC_MULTICAST_LOCATOR
            | PID_DEFAULT_MULTICAST_LOCATOR => {
                need(24)?;
                let loc = locator(v, order);
                match pid {
                    PID_DEFAULT_UNICAST_LOCATOR => part.default_unicast.push(loc),
                    PID_METATRAFFIC_UNICAST_LOCATOR => part.metatraffic_unicast.push(loc),
                    PID_METATRAFFIC_MULTICAST_LOCATOR => part.metatraffic_multicast.push(loc),
                    _ => part.default_multicast.push(loc),
                }
            }
            PID_ENTITY_NAME => {
                need(4)?;
                let n = order.u32(v) as usize;
                let s = v.get(4..4 + n).ok_or(DecodeError::BadParameter(pid))?;
                let s = s.strip_suffix(&[0]).unwrap_or(s);
                part.name = Some(String::from_utf8_lossy(s).into_owned());
            }
            PID_PROTOCOL_VERSION
            | PID_VENDORID
            | PID_PARTICIPANT_GUID
            | PID_BUILTIN_ENDPOINT_SET => {}
            _ => {}
        }
        p += 4 + len;
    }
    Ok(())
}

fn locator(v: &[u8], order: Order) -> Locator {
    let kind = order.u32(v) as i32;
    let port = order.u32(&v[4..]);
    let mut a = [0u8; 16];
    a.copy_from_slice(&v[8..24]);
    let address = if kind == 1 || kind == 4 {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    };
    Locator {
        kind,
        port,
        address,
    }
}

/// A minimal, valid SPDP DATA(p) (little-endian), as `probe --announce` sends it.
pub fn encode_spdp(
    guid_prefix: [u8; 12],
    domain: u16,
    unicast: Ipv4Addr,
    unicast_port: u16,
    name: &str,
    seq: u64,
) -> Vec<u8> {
    let mut pl = Vec::new();
    let mut param = |pid: u16, value: &[u8]| {
        let padded = value.len().div_ceil(4) * 4;
        pl.extend_from_slice(&pid.to_le_bytes());
        pl.extend_from_slice(&(padded as u16).to_le_bytes());
        pl.extend_from_slice(value);
        pl.extend(std::iter::repeat_n(0u8, padded - value.len()));
    };
    let loc = |port: u16, addr: Ipv4Addr| {
        let mut l = Vec::with_capacity(24);
        l.extend_from_slice(&1i32.to_le_bytes());
        l.extend_from_slice(&u32::from(port).to_le_bytes());
        l.extend_from_slice(&[0u8; 12]);
        l.extend_from_slice(&addr.octets());
        l
    };
    param(PID_PROTOCOL_VERSION, &[2, 3]);
    param(PID_VENDORID, &[0x00, 0x00]);
    let mut guid = guid_prefix.to_vec();
    guid.extend_from_slice(&[0x00, 0x00, 0x01, 0xc1]);
    param(PID_PARTICIPANT_GUID, &guid);
    param(PID_DOMAIN_ID, &u32::from(domain).to_le_bytes());
    param(PID_METATRAFFIC_UNICAST_LOCATOR, &loc(unicast_port, unicast));
    param(PID_DEFAULT_UNICAST_LOCATOR, &loc(unicast_port, unicast));
    param(
        PID_METATRAFFIC_MULTICAST_LOCATOR,
        &loc(discovery_multicast_port(domain), SPDP_GROUP),
    );
    let mut lease = 20u32.to_le_bytes().to_vec();
    lease.extend_from_slice(&0u32.to_le_bytes());
    param(PID_LEASE_DURATION, &lease);
    // Builtin endpoints: participant announcer and detector.
    param(PID_BUILTIN_ENDPOINT_SET, &0x3u32.to_le_bytes());
    let mut s = (name.len() as u32 + 1).to_le_bytes().to_vec();
    s.extend_from_slice(name.as_bytes());
    s.push(0);
    param(PID_ENTITY_NAME, &s);
    pl.extend_from_slice(&PID_SENTINEL.to_le_bytes());
    pl.extend_from_slice(&0u16.to_le_bytes());

    let mut data = Vec::new();
    data.extend_from_slice(&[0, 0]); // extraFlags
    data.extend_from_slice(&16u16.to_le_bytes()); // octetsToInlineQos
    data.extend_from_slice(&SPDP_READER);
    data.extend_from_slice(&SPDP_WRITER);
    data.extend_from_slice(&((seq >> 32) as u32).to_le_bytes());
    data.extend_from_slice(&(seq as u32).to_le_bytes());
    data.extend_from_slice(&[0x00, 0x03, 0x00, 0x00]); // PL_CDR_LE
    data.extend_from_slice(&pl);

    let mut msg = Vec::new();
    msg.extend_from_slice(b"RTPS");
    msg.extend_from_slice(&[2, 3, 0x00, 0x00]);
    msg.extend_from_slice(&guid_prefix);
    msg.push(SUBMSG_DATA);
    msg.push(FLAG_LITTLE_ENDIAN | FLAG_DATA);
    msg.extend_from_slice(&(data.len() as u16).to_le_bytes());
    msg.extend_from_slice(&data);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mapping_follows_the_spec() {
        assert_eq!(discovery_multicast_port(0), 7400);
        assert_eq!(discovery_unicast_port(0, 0), 7410);
        assert_eq!(discovery_unicast_port(0, 1), 7412);
        assert_eq!(user_multicast_port(0), 7401);
        assert_eq!(user_unicast_port(0, 0), 7411);
        assert_eq!(discovery_multicast_port(1), 7650);
        assert_eq!(user_unicast_port(42, 3), 7400 + 250 * 42 + 11 + 6);
        assert_eq!(user_unicast_port(MAX_DOMAIN, 100), 65400 + 11 + 200);
        assert_eq!(domain_of_port(7650), Some(1));
        assert_eq!(domain_of_port(7651), None);
        assert!(u32::from(discovery_multicast_port(MAX_DOMAIN)) + u32::from(D3) <= 65535);
    }

    #[test]
    fn encoded_announcement_decodes_back() {
        let prefix = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let msg = encode_spdp(prefix, 7, Ipv4Addr::new(198, 51, 100, 9), 9000, "probe", 1);
        let p = decode_spdp(&msg).unwrap();
        assert_eq!(p.guid_prefix, prefix);
        assert_eq!(p.domain_id, Some(7));
        assert_eq!(p.protocol_version, (2, 3));
        assert_eq!(p.name.as_deref(), Some("probe"));
        assert_eq!(p.lease_duration, Some(20.0));
        assert_eq!(
            p.metatraffic_unicast[0].to_string(),
            "udp/198.51.100.9:9000"
        );
        assert_eq!(p.metatraffic_multicast[0].port, 7400 + 250 * 7);
    }

    /// Every truncation and thousands of mutations of a valid message: an answer, never a panic.
    #[test]
    fn decoder_is_total() {
        let msg = encode_spdp([9; 12], 0, Ipv4Addr::new(198, 51, 100, 9), 7410, "x", 1);
        for cut in 0..msg.len() {
            let _ = decode_spdp(&msg[..cut]);
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..50_000 {
            let mut m = msg.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % m.len();
                m[i] = (state >> 32) as u8;
            }
            let _ = decode_spdp(&m);
        }
        assert_eq!(
            decode_spdp(b"RTPX0000000000000000"),
            Err(DecodeError::NotRtps)
        );
    }
}
