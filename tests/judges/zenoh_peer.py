"""Zenoh 1.10 (the PyPI wheel `eclipse-zenoh`) as a judge: a publisher, a subscriber or a
router, configured as rmw_zenoh users configure it.

  zenoh_peer.py pub NAME --seconds S [--base B] [--override 'KEY=VALUE;...']
  zenoh_peer.py sub --expect A,B --samples N --seconds S [--base B] [--override ...]
  zenoh_peer.py router --seconds S [--base B] [--override ...]

--base picks the configuration started from: `zenoh` (Zenoh's own defaults: a peer that
listens on every address and scouts by multicast), `rmw-session` (rmw_zenoh's session
defaults: connect to a router at tcp/localhost:7447, listen on tcp/localhost:0, multicast
scouting off, gossip to the router) or `rmw-router` (rmw_zenohd's: a router listening on
tcp/[::]:7447, multicast scouting off). --override takes the syntax of rmw_zenoh's
ZENOH_CONFIG_OVERRIDE: `key/path=json5 value` pairs separated by `;`.

pub puts "NAME <n>" on rt/chatter at 10 Hz for S seconds and prints "summary put NAME <n>".
sub prints "heard NAME <n>" per sample and "summary heard NAME <count>" per publisher; it
exits 0 once it has N samples of every expected publisher, 1 at S seconds if not. router
prints "router <zid> listening <locators>" and runs S seconds. Every role prints its
session's locators ("locators ...") and the peers it is connected to at the end.
"""
import argparse
import sys
import time

import zenoh

KEY = "rt/chatter"

BASES = {
    "zenoh": [],
    "rmw-session": [
        ("mode", '"peer"'),
        ("connect/endpoints", '["tcp/localhost:7447"]'),
        ("listen/endpoints", '["tcp/localhost:0"]'),
        ("scouting/multicast/enabled", "false"),
        ("scouting/gossip/target", '{router: ["router", "peer"], peer: ["router"]}'),
    ],
    "rmw-router": [
        ("mode", '"router"'),
        ("listen/endpoints", '["tcp/[::]:7447"]'),
        ("scouting/multicast/enabled", "false"),
        ("scouting/multicast/autoconnect", '{router: [], peer: ["router", "peer"], client: ["router"]}'),
    ],
}


def config(base, override):
    conf = zenoh.Config()
    pairs = list(BASES[base])
    for item in filter(None, (s.strip() for s in override.split(";"))):
        key, _, value = item.partition("=")
        pairs.append((key.strip(), value.strip()))
    for key, value in pairs:
        conf.insert_json5(key, value)
    return conf


def describe(session):
    info = session.info
    print(f"zid {info.zid()}", flush=True)
    print("peers " + " ".join(str(z) for z in info.peers_zid()), flush=True)
    print("routers " + " ".join(str(z) for z in info.routers_zid()), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["pub", "sub", "router"])
    p.add_argument("name", nargs="?", default="pub")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--base", choices=sorted(BASES), default="zenoh")
    p.add_argument("--override", default="")
    p.add_argument("--expect", default="")
    p.add_argument("--samples", type=int, default=10)
    a = p.parse_args()
    deadline = time.monotonic() + a.seconds
    conf = config(a.base, a.override)
    if a.role == "router":
        conf.insert_json5("mode", '"router"')
    session = zenoh.open(conf)
    if a.role == "router":
        print(f"router {session.info.zid()} ready", flush=True)
        while time.monotonic() < deadline:
            time.sleep(0.1)
        describe(session)
        session.close()
        return 0
    if a.role == "pub":
        pub = session.declare_publisher(KEY)
        n = 0
        while time.monotonic() < deadline:
            pub.put(f"{a.name} {n}")
            n += 1
            time.sleep(0.1)
        print(f"summary put {a.name} {n}", flush=True)
        describe(session)
        session.close()
        return 0
    expect = [e for e in a.expect.split(",") if e]
    heard = {}
    sub = session.declare_subscriber(KEY)
    while time.monotonic() < deadline:
        sample = sub.try_recv()
        if sample is None:
            time.sleep(0.02)
            continue
        text = sample.payload.to_string()
        name = text.split(" ")[0]
        heard[name] = heard.get(name, 0) + 1
        print(f"heard {text}", flush=True)
        if expect and all(heard.get(e, 0) >= a.samples for e in expect):
            break
    for name in sorted(set(expect) | set(heard)):
        print(f"summary heard {name} {heard.get(name, 0)}", flush=True)
    describe(session)
    session.close()
    return 0 if all(heard.get(e, 0) >= a.samples for e in expect) else 1


if __name__ == "__main__":
    sys.exit(main())
