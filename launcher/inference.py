"""One KServe v2 inference over HTTP: what the canary and ``launcher infer`` send."""

from __future__ import annotations

import http.client
import json
import math
from typing import Any


def send(host: str, port: int, model: str, inputs: str, timeout_s: float) -> tuple[int, bytes]:
    """POST ``{"inputs": inputs}`` to the model; (HTTP status, body). Raises OSError/HTTPException/TimeoutError."""
    body = json.dumps({"inputs": json.loads(inputs)}).encode()
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def answer_problem(body: bytes) -> str | None:
    """What is wrong with an inference answer's shape, or None: a list of outputs, each with a name, a
    datatype, a shape and as many data elements as the shape holds."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return f"the answer is not JSON: {body[:120]!r}"
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return f"the answer has no outputs: {body[:120]!r}"
    for output in outputs:
        if not isinstance(output, dict) or not {"name", "datatype", "shape", "data"} <= output.keys():
            return f"an output lacks name, datatype, shape or data: {json.dumps(output)[:120]}"
        if math.prod(output["shape"]) != len(output["data"]):
            return (f"output {output['name']}: shape {output['shape']} holds {math.prod(output['shape'])} "
                    f"elements but data has {len(output['data'])}")
    return None
