"""CycloneDDS 11 (the PyPI wheel `cyclonedds`, which bundles libddsc 11) as a judge: a writer
or a reader on one topic, with no CycloneDDS configuration at all (CYCLONEDDS_URI is removed:
the tests run it as a user who has configured nothing would).

  cyclonedds11.py writer NAME --seconds S [--rate HZ]
      writes "NAME <n>" at HZ (default 10) for S seconds, then prints
      "summary wrote NAME <count> matched <readers>" and exits 0.
  cyclonedds11.py reader --expect A,B --samples N --seconds S
      prints "heard NAME <n>" for each sample and "summary heard NAME <count>" per writer;
      exits 0 as soon as N samples of every expected writer are in, 1 at S seconds if not.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass

os.environ.pop("CYCLONEDDS_URI", None)

from cyclonedds.core import Qos, Policy  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402
from cyclonedds.util import duration  # noqa: E402

TOPIC = "rt/chatter"


@dataclass
class Chatter(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["writer", "reader"])
    p.add_argument("name", nargs="?", default="writer")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--expect", default="")
    p.add_argument("--samples", type=int, default=10)
    a = p.parse_args()
    deadline = time.monotonic() + a.seconds
    dp = DomainParticipant(0)
    topic = Topic(dp, TOPIC, Chatter)
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)))
    if a.role == "writer":
        w = DataWriter(dp, topic, qos=qos)
        n = 0
        while time.monotonic() < deadline:
            w.write(Chatter(data=f"{a.name} {n}"))
            n += 1
            time.sleep(1.0 / a.rate)
        matched = len(w.get_matched_subscriptions())
        print(f"summary wrote {a.name} {n} matched {matched}", flush=True)
        return 0
    expect = [e for e in a.expect.split(",") if e]
    r = DataReader(dp, topic, qos=qos)
    heard = {}
    while time.monotonic() < deadline:
        for s in r.take(N=100):
            if not isinstance(s, Chatter):
                continue
            name = s.data.split(" ")[0]
            heard[name] = heard.get(name, 0) + 1
            print(f"heard {s.data}", flush=True)
        if expect and all(heard.get(e, 0) >= a.samples for e in expect):
            break
        time.sleep(0.05)
    for name in sorted(set(expect) | set(heard)):
        print(f"summary heard {name} {heard.get(name, 0)}", flush=True)
    return 0 if all(heard.get(e, 0) >= a.samples for e in expect) else 1


if __name__ == "__main__":
    sys.exit(main())
