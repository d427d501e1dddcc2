"""Send one request to the toy model on rank 0 and check the answer.

    python -m launcher.examples.request [--url 127.0.0.1:8000] [--wait SECONDS] 1 2 3

The toy model answers sum over ranks r of (r + 1) * INPUT, so the expected
value depends on how many ranks took part; RANKS says how many did.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tritonclient.http as httpclient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("values", nargs="*", type=float, default=[1.0, 2.0, 3.0])
    parser.add_argument("--url", default="127.0.0.1:8000")
    parser.add_argument("--model", default="toy_tp")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server to be ready")
    args = parser.parse_args(argv)

    client = httpclient.InferenceServerClient(args.url)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            print(f"error: no ready Triton at {args.url}; is `launcher local` running?", file=sys.stderr)
            return 1
        time.sleep(0.2)

    x = np.asarray(args.values, dtype=np.float32)
    tensor = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(args.model, [tensor])
    output, ranks = result.as_numpy("OUTPUT"), int(result.as_numpy("RANKS")[0])
    expected = x * ranks * (ranks + 1) / 2
    print(f"INPUT  {x.tolist()}")
    print(f"OUTPUT {output.tolist()}  (from {ranks} ranks; expected {expected.tolist()})")
    return 0 if np.allclose(output, expected) else 2


if __name__ == "__main__":
    sys.exit(main())
