"""The judge against a real HTTP server on 127.0.0.1 speaking the chat-completions protocol
(scripted answers, malformed ones included), and the local probability judge against a plain
forward pass."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.judge import DIMENSIONS, LocalJudge, parse_answer
from nsync.judge.rubric import dimension_question, episode_context
from nsync.judge.run import JudgeConfig, conversations, judge_cache
from nsync.simulation.config import SimulateConfig
from nsync.simulation.run import simulate

SECRET_KEY = "sk-test-secret-123"


def _scores(goal_a=7, goal_b=4, **override):
    a = {d.name: max(d.low, min(d.high, 1)) for d in DIMENSIONS} | {"goal": goal_a}
    b = {d.name: max(d.low, min(d.high, 0)) for d in DIMENSIONS} | {"goal": goal_b}
    a.update(override)
    return {"reasoning": "fine", "agent_a": a, "agent_b": b}


class ScriptedServer:
    """Answers each request with the next scripted item: a string (the assistant's content) or
    an int (an HTTP error status)."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                item = server.script.pop(0) if server.script else json.dumps(_scores())
                if isinstance(item, int):
                    self.send_response(item)
                    self.send_header("Content-Type", "application/json")
                    payload = json.dumps({"error": {"message": "scripted failure", "type": "server_error"}}).encode()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    payload = json.dumps({
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": item}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }).encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge") / "cache"
    args = [f"out={out}", "models=[tiny-llama]", "scenarios.limit=3", "max_turns=3", "sampling.max_new_tokens=5", "progress=false"]
    simulate(load_config(SimulateConfig, args, prog="test"))
    return out


def _cfg(cache, server, name, **kw):
    args = [f"cache={cache}", "backend=openai", "model=judge-model", f"base_url={server.url}", f"name={name}",
            "api_key_env=NSYNC_TEST_JUDGE_KEY", "progress=false"] + [f"{k}={v}" for k, v in kw.items()]
    return load_config(JudgeConfig, args, prog="test")


def test_valid_answers_become_the_table_and_rerun_is_free(cache, server, monkeypatch):
    monkeypatch.setenv("NSYNC_TEST_JUDGE_KEY", SECRET_KEY)
    server.script = [json.dumps(_scores(goal_a=g)) for g in (9, 5, 2)]
    out, table = judge_cache(_cfg(cache, server, "valid"))
    assert len(server.requests) == 3 and server.requests[0]["path"].endswith("/chat/completions")
    assert server.requests[0]["body"]["temperature"] == 0 and server.requests[0]["auth"] == f"Bearer {SECRET_KEY}"
    prompt = server.requests[0]["body"]["messages"][0]["content"]
    # the judge sees both goals and both secrets
    run, episode, history = next(conversations(__import__("nsync.cache", fromlist=["x"]).ActivationCache.open(cache)))
    assert all(g in prompt for g in episode.scenario.goals) and all(c.secret in prompt for c in episode.characters)
    assert len(table) == 6 and (table.status == "ok").all()
    a = table[table.agent == 0].sort_values("run_id")
    assert sorted(a.goal.tolist()) == [2, 5, 9]
    row = table.iloc[0]
    assert row.overall == pytest.approx(np.mean([row[d.name] for d in DIMENSIONS]))
    assert pd.read_csv(out / "scores.csv").shape[0] == 6
    # the key is never written anywhere
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET_KEY.encode() not in f.read_bytes(), f
    n = len(server.requests)
    judge_cache(_cfg(cache, server, "valid"))
    assert len(server.requests) == n  # every judgement re-used


def test_malformed_answers_are_retried_with_the_reason(cache, server):
    server.script = ["I think they did well!", json.dumps(_scores()), json.dumps(_scores()), json.dumps(_scores())]
    _, table = judge_cache(_cfg(cache, server, "retry"))
    assert (table.status == "ok").all()
    assert table.sort_values("run_id").attempts.iloc[0] == 2
    retry = server.requests[1]["body"]["messages"]
    assert len(retry) == 3 and retry[1]["content"] == "I think they did well!" and "no JSON object" in retry[2]["content"]


def test_out_of_range_after_all_attempts_is_a_recorded_failure(cache, server):
    bad = json.dumps(_scores(believability=14))
    # the SDK itself retries a server error twice, then it counts as one failed attempt
    server.script = [bad, "{not json", 500, 500, 500, json.dumps(_scores()), json.dumps(_scores())]
    out, table = judge_cache(_cfg(cache, server, "fail", max_attempts=3))
    failed = table[table.status == "failed"]
    assert failed.run_id.nunique() == 1 and len(failed) == 2  # both agents' rows kept
    assert failed.overall.isna().all() and failed.goal.isna().all()  # never a silent zero
    assert "believability" in failed.raw.iloc[0] and "{not json" in failed.raw.iloc[0] and "HTTP 500" in failed.raw.iloc[0]
    assert failed.attempts.iloc[0] == 3
    assert json.loads((out / "judge.json").read_text())["failed"] == 1
    assert table.run_id.nunique() == 3  # the failure stays in the count


def test_parse_answer_accepts_fences_and_rejects_fractions():
    text = "```json\n" + json.dumps(_scores()) + "\n```"
    assert parse_answer(text).agent_a.goal == 7
    with pytest.raises(ValueError, match="agent_a.goal"):
        parse_answer(json.dumps(_scores(goal_a=7.5)))


def test_unreachable_server_is_a_user_error(cache):
    cfg = load_config(JudgeConfig, [f"cache={cache}", "backend=openai", "base_url=http://127.0.0.1:9/v1", "name=x",
                                    "progress=false", "timeout=2"], prog="test")
    with pytest.raises(NsyncError, match="cannot reach the judge"):
        judge_cache(cfg)


def test_local_judge_matches_a_plain_forward_pass(cache, tiny_llama):
    from nsync.cache import ActivationCache

    judge = LocalJudge(tiny_llama)
    run, episode, history = next(conversations(ActivationCache.open(cache)))
    dists = judge.distributions(episode, history)
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    dim = DIMENSIONS[1]  # relationship, -5..5: candidates of different token lengths
    ctx = tok(episode_context(episode, history), add_special_tokens=False)["input_ids"]
    ctx = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ctx
    q = tok(dimension_question(episode, 1, dim), add_special_tokens=False)["input_ids"]
    logps = []
    for v in dim.values:
        cand = tok(f" {v}\n", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + q + cand])
        with torch.no_grad():
            logp = model(ids).logits[0].log_softmax(-1)
        start = len(ctx) + len(q)
        logps.append(sum(float(logp[start - 1 + i, t]) for i, t in enumerate(cand)))
    ref = torch.tensor(logps).softmax(0).numpy()
    np.testing.assert_allclose(dists["agent_b"][dim.name], ref, atol=1e-4)
    j = judge.score(episode, history)
    assert j.ok and dim.low <= j.scores["agent_b"][dim.name] <= dim.high
    assert j.argmax["agent_b"][dim.name] == dim.values[int(ref.argmax())]
    assert judge.score(episode, history).scores == j.scores  # deterministic


def test_local_judge_table(cache, tiny_llama):
    cfg = load_config(JudgeConfig, [f"cache={cache}", "backend=local", "model=tiny-llama", "progress=false"], prog="test")
    out, table = judge_cache(cfg, judge=LocalJudge(tiny_llama))
    assert (table.status == "ok").all() and len(table) == 6
    assert table.overall.between(-10, 10).all() and "goal_argmax" in table
    assert out.name == "tiny-llama"
