"""A local server that speaks the OpenAI completions protocol, driven by a (tiny) model, so that
backend tests see real model output: ``GET /v1/models`` and ``POST /v1/completions`` (prompt as
token ids or text, streamed or not, per-request seed, stop strings). Like vLLM and llama.cpp it
generates until EOS, ``max_tokens`` or a stop string; the client decides when a line is complete.
``fail_next`` answers that many requests with HTTP 503 first (the client must retry);
``bos_on_text`` adds a BOS token to text prompts, as some servers do; ``interrupt`` ends every
stream after its first chunk without a finish reason, as llama-cpp-python's server does by default
when other requests wait."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from nsync.simulation.config import SamplingConfig
from nsync.simulation.generation import Generator


class CompletionsStub:
    def __init__(self, lm, served: str = "stub-model"):
        self.lm, self.served = lm, served
        self.requests: list[dict] = []
        self.fail_next = 0
        self.bos_on_text = False
        self.interrupt = False
        self.owned_by = "stub"  # vLLM says "vllm", llama.cpp's servers "llamacpp" or "me"
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _json(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": stub.served, "object": "model", "owned_by": stub.owned_by}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    fail = stub.fail_next > 0
                    stub.fail_next -= fail
                if fail:
                    return self._json(503, {"error": {"message": "busy", "type": "server_error"}})
                if body.get("model") != stub.served:
                    return self._json(404, {"error": {"message": f"model '{body.get('model')}' not found", "type": "not_found"}})
                ids = stub.prompt_ids(body["prompt"])
                pieces, reason = stub.complete(ids, body)
                if not body.get("stream"):
                    usage = {"prompt_tokens": len(ids), "completion_tokens": len(pieces), "total_tokens": len(ids) + len(pieces)}
                    choice = {"index": 0, "text": "".join(pieces), "finish_reason": reason}
                    return self._json(200, {"id": "c", "object": "text_completion", "choices": [choice], "usage": usage})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for i, piece in enumerate(pieces[:1] if stub.interrupt else pieces):
                        last = i == len(pieces) - 1 and not stub.interrupt
                        chunk = {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": piece, "finish_reason": reason if last else None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client had its reply
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def prompt_ids(self, prompt: list[int] | str) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        tok = self.lm.tokenizer
        return [tok.bos_token_id] * self.bos_on_text + tok(prompt, add_special_tokens=False)["input_ids"]

    def complete(self, ids: list[int], body: dict) -> tuple[list[str], str]:
        """The reply's text, one piece per generated token (each the text the token adds), and why it ended."""
        sampling = SamplingConfig(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(body.get("max_tokens", 16)),
            first_line_only=False,
            no_repeat_ngram=0,
        )
        stream = torch.Generator().manual_seed(int(body.get("seed") or 0))
        with self._lock:  # one forward at a time: the model is shared
            tokens = Generator(self.lm, sampling).generate([ids], [stream], capture=False).tokens[0]
        # incremental detokenisation as servers do it: a token that ends inside a multi-byte
        # character sends nothing until the character is complete (the last token sends the rest)
        pieces, sent = [], ""
        for i in range(len(tokens)):
            text = self.lm.tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)
            if text.endswith("\ufffd") and i < len(tokens) - 1:
                pieces.append("")
                continue
            pieces.append(text[len(sent) :])
            sent = text
        stops = [s for s in body.get("stop") or [] if s]
        out, so_far = [], ""
        for piece in pieces:
            if any(s in so_far + piece for s in stops):
                cut = min((so_far + piece).index(s) for s in stops if s in so_far + piece)
                out.append((so_far + piece)[len(so_far) : cut])
                return out, "stop"
            out.append(piece)
            so_far += piece
        return out, "length" if len(tokens) >= sampling.max_new_tokens else "stop"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
