"""A UDP probe for checking the lab's NAT rulesets (stdlib only, one socket).

``python netlab_udp.py --bind PORT [--send IP:PORT:TEXT ...] [--listen SECONDS] [--reflect]``
binds ``0.0.0.0:PORT``, sends each TEXT to IP:PORT in order, then prints one JSON line
per datagram received within SECONDS (``{"from": [ip, port], "data": text}``). With
``--reflect`` it answers every datagram with the source address it saw (what a STUN
server does), so a host behind a NAT learns its mapping. Prints ``{"sent": true}``
once the sends are out.
"""

import argparse
import json
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", type=int, required=True)
    parser.add_argument("--send", action="append", default=[])
    parser.add_argument("--listen", type=float, default=0.0)
    parser.add_argument("--reflect", action="store_true")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.bind))
    for target in args.send:
        host, port, text = target.split(":", 2)
        sock.sendto(text.encode(), (host, int(port)))
    print(json.dumps({"sent": True}), flush=True)
    deadline = time.monotonic() + args.listen
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            break
        print(json.dumps({"from": list(source), "data": data.decode(errors="replace")}), flush=True)
        if args.reflect:
            sock.sendto(json.dumps(list(source)).encode(), source)


if __name__ == "__main__":
    main()
