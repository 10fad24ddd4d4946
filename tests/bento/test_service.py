"""The BentoML service in process (``Service.to_asgi()`` + TestClient) and behind ``bentoml serve``.

One tiny release (random tiny CLIP, random tiny Qwen2.5-VL, a seeded msjoe sampler checkpoint)
is imported into a temporary BentoML model store; the service loads it as ``msjoe:latest``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from msjoe.mllm.parsing import OPTION_LETTERS
from msjoe.pipeline import STAGES
from msjoe.serving import import_release
from msjoe.video import sha256_file
from tests.bento import bentoml_serve, build_model_dirs, release_config
from tests.media import write_video

QUESTION = "What colour was the star?"
OPTIONS = ["red", "green", "blue", "yellow"]
MAX_UPLOAD = 200_000


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private BentoML home: the model store of this process points into it."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = tmp_path_factory.mktemp("bentoml_home")
    (home / "models").mkdir()
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    yield home
    BentoMLContainer.model_store.reset()


@pytest.fixture(scope="module")
def release(bento_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    clip_dir, mllm_dir, sampler_ckpt = build_model_dirs(tmp_path_factory.mktemp("models"))
    return import_release(clip_dir, mllm_dir, sampler_ckpt,
                          release_config(max_upload_bytes=MAX_UPLOAD, max_duration_s=60.0),
                          labels={"stage": "test"}, metadata={"run": "tests"})


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    good = write_video(root / "demo.mp4", n_frames=24, fps=4, size=32, seed=0)  # 6 s, 12 candidates
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return {
        "good": good,
        "other": write_video(root / "other.mp4", n_frames=20, fps=4, size=32, seed=1),
        "long": write_video(root / "long.mp4", n_frames=70, fps=1, size=32, seed=2),  # 70 s > 60 s
        "truncated": root / "truncated.mp4",
    }


@pytest.fixture(scope="module")
def client(release: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSJOE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("MSJOE_DEVICE", "auto")
        from bento.service import MSJoE

        with TestClient(MSJoE.to_asgi()) as test_client:
            yield test_client


def upload(client: Any, video: bytes | None, question: str = QUESTION, options: Any = OPTIONS,
           budget: int | None = 4, name: str = "clip.mp4") -> Any:
    data = {"question": question, "options": json.dumps(options)}
    if budget is not None:
        data["budget"] = str(budget)
    files = {"video": (name, video, "video/mp4")} if video is not None else None
    return client.post("/answer", data=data, files=files)


def check_reply(reply: dict[str, Any], budget: int, video: Path, release: str) -> None:
    # every reply chooses an option: the reply's own, or the one the MLLM scores highest after it
    assert reply["option"] in OPTION_LETTERS[: len(OPTIONS)]
    assert reply["option_index"] == OPTION_LETTERS.index(reply["option"])
    assert isinstance(reply["option_scored"], bool) and isinstance(reply["answer_text"], str)
    assert 1 <= len(reply["queries"]) <= 4 and all(isinstance(q, str) and q for q in reply["queries"])
    frames = reply["frames"]
    assert len(frames) == budget and all(set(f) == {"index", "timestamp", "weight"} for f in frames)
    assert [f["timestamp"] for f in frames] == sorted(f["timestamp"] for f in frames)
    # 4 fps video, candidates at 2 fps: frame i is shown at i / 4 s
    assert all(f["timestamp"] == pytest.approx(f["index"] / 4.0) for f in frames)
    assert set(STAGES) | {"check", "wait", "request"} <= set(reply["timings"])
    assert reply["timings"]["request"] >= reply["timings"]["total"] > 0
    assert reply["sampler"] == "msjoe" and reply["budget"] == budget and reply["model"] == release
    assert reply["video"]["sha256"] == sha256_file(video)
    assert reply["video"]["duration_s"] == pytest.approx(6.0) and reply["video"]["n_frames"] == 24


def test_answer_then_reuse_features_of_the_same_content(client: Any, videos: dict[str, Path], release: str) -> None:
    data = videos["good"].read_bytes()
    first = upload(client, data, budget=4)
    assert first.status_code == 200, first.text
    check_reply(first.json(), 4, videos["good"], release)
    assert first.json()["features_cached"] is False

    # same bytes under another name: content hash hit, no probe, same deterministic selection
    again = upload(client, data, budget=4, name="renamed.mp4")
    assert again.status_code == 200, again.text
    check_reply(again.json(), 4, videos["good"], release)
    assert again.json()["features_cached"] is True
    assert again.json()["frames"] == first.json()["frames"]
    assert again.json()["timings"]["check"] < first.json()["timings"]["check"]

    # no budget: the release default (4); a bigger budget than candidates selects every candidate
    default = upload(client, videos["other"].read_bytes(), budget=None)
    assert default.status_code == 200 and default.json()["budget"] == 4 and len(default.json()["frames"]) == 4
    everything = upload(client, data, budget=16)
    assert everything.status_code == 200 and len(everything.json()["frames"]) == 12


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("junk", 415, "unsupported_video"),
        ("truncated", 415, "unsupported_video"),
        ("empty", 400, "empty_video"),
        ("too_long_video", 422, "video_too_long"),
        ("over_file_limit", 413, "video_too_large"),
        ("over_request_cap", 413, "request_too_large"),
        ("too_many_options", 400, "option_count"),
        ("one_option", 400, "option_count"),
        ("long_question", 400, "question_too_long"),
        ("long_option", 400, "option_too_long"),
        ("zero_budget", 400, "invalid_budget"),
        ("huge_budget", 400, "invalid_budget"),
        ("url_as_video", 400, "video_not_a_file"),
        ("path_as_video", 400, "video_not_a_file"),
        ("urlencoded", 415, "multipart_required"),
        ("json_body", 415, "multipart_required"),
        ("missing_video", 400, None),
        ("missing_question", 400, None),
        ("options_not_a_list", 400, None),
    ],
)
def test_bad_requests_are_4xx_and_the_service_keeps_serving(
    client: Any, videos: dict[str, Path], case: str, status: int, code: str | None
) -> None:
    good = videos["good"].read_bytes()
    form = {"question": QUESTION, "options": json.dumps(OPTIONS)}
    if case == "junk":
        response = upload(client, os.urandom(5000))
    elif case == "truncated":
        response = upload(client, videos["truncated"].read_bytes())
    elif case == "empty":
        response = upload(client, b"")
    elif case == "too_long_video":
        response = upload(client, videos["long"].read_bytes())
    elif case == "over_file_limit":  # passes the body cap, fails the file limit, never decoded
        response = upload(client, b"\0" * (MAX_UPLOAD + 10))
    elif case == "over_request_cap":  # refused from Content-Length, before the body is read
        response = upload(client, b"\0" * (MAX_UPLOAD * 2))
    elif case == "too_many_options":
        response = upload(client, good, options=[f"option {i}" for i in range(11)])
    elif case == "one_option":
        response = upload(client, good, options=["red"])
    elif case == "long_question":
        response = upload(client, good, question="why " * 300)
    elif case == "long_option":
        response = upload(client, good, options=["red", "x" * 301])
    elif case == "zero_budget":
        response = upload(client, good, budget=0)
    elif case == "huge_budget":
        response = upload(client, good, budget=17)
    elif case == "url_as_video":  # BentoML would download a text "file" field; the guard refuses
        response = client.post("/answer", data={**form, "video": "http://127.0.0.1:1/secret.mp4"},
                               files={"note": ("note.txt", b"multipart, but video is text")})
    elif case == "path_as_video":
        response = client.post("/answer", data={**form, "video": "/etc/passwd"},
                               files={"note": ("note.txt", b"multipart, but video is text")})
    elif case == "urlencoded":  # form-urlencoded fields are all text: same download risk
        response = client.post("/answer", data={**form, "video": "http://127.0.0.1:1/secret.mp4"})
    elif case == "json_body":
        response = client.post("/answer", json={**form, "options": OPTIONS, "video": "/etc/passwd"})
    elif case == "missing_video":
        response = client.post("/answer", data=form, files={"other": ("x.bin", b"x")})
    elif case == "missing_question":
        response = client.post("/answer", data={"options": json.dumps(OPTIONS)},
                               files={"video": ("a.mp4", good, "video/mp4")})
    else:  # options_not_a_list
        response = upload(client, good, options="red")
    assert response.status_code == status, response.text
    if code is not None:
        body = response.json()
        assert body["code"] == code and body["status"] == status and body["error"]
    # the server is unharmed: a good request right after still answers
    assert upload(client, good).status_code == 200


def test_health_and_probes(client: Any, release: str) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"] == release
    assert body["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert body["sampler"] == "msjoe" and body["default_budget"] == 4
    assert body["limits"]["max_upload_bytes"] == MAX_UPLOAD
    assert body["cache"]["files"] >= 2 and body["cache"]["bytes"] > 0  # features + probe records
    assert body["requests"]["answered"] >= 1 and body["requests"]["features_cached"] >= 1


@pytest.fixture(scope="module")
def server(release: str, bento_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``bentoml serve`` of the test release (one per module)."""
    tmp = tmp_path_factory.mktemp("serve")
    env = {"BENTOML_HOME": str(bento_home), "MSJOE_CACHE_DIR": str(tmp / "cache"),
           "MSJOE_MODEL_TAG": release, "MSJOE_LIMIT_MAX_OPTIONS": "5", "OMP_NUM_THREADS": "1"}
    with bentoml_serve(env, tmp / "serve.log") as base:
        yield base


@pytest.mark.slow
def test_bentoml_serve_end_to_end(server: str, release: str, videos: dict[str, Path]) -> None:
    import httpx

    with httpx.Client(base_url=server, timeout=60.0) as http:
        before = http.get("/health").json()["requests"]
        form = {"question": QUESTION, "options": json.dumps(OPTIONS), "budget": "4"}
        video = videos["good"].read_bytes()
        first = http.post("/answer", data=form, files={"video": ("demo.mp4", video, "video/mp4")})
        assert first.status_code == 200, first.text
        check_reply(first.json(), 4, videos["good"], release)

        junk = http.post("/answer", data=form, files={"video": ("junk.mp4", b"not a video" * 100, "video/mp4")})
        assert junk.status_code == 415 and junk.json()["code"] == "unsupported_video"
        # env override of a release limit
        many = http.post("/answer", data={**form, "options": json.dumps(OPTIONS + ["a", "b"])},
                         files={"video": ("demo.mp4", video, "video/mp4")})
        assert many.status_code == 400 and many.json()["code"] == "option_count"

        again = http.post("/answer", data=form, files={"video": ("again.mp4", video, "video/mp4")})
        assert again.status_code == 200 and again.json()["features_cached"] is True
        assert again.json()["frames"] == first.json()["frames"]
        # concurrent uploads queue for the models and all succeed
        other = videos["other"].read_bytes()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(
                lambda data: http.post("/answer", data=form, files={"video": ("c.mp4", data, "video/mp4")}),
                [video, other, video, other],
            ))
        assert [r.status_code for r in replies] == [200] * 4
        assert replies[0].json()["frames"] == first.json()["frames"]
        assert replies[1].json()["frames"] == replies[3].json()["frames"]
        health = http.get("/health").json()
        assert health["model"] == release
        assert health["requests"]["answered"] - before["answered"] == 6
        assert health["requests"]["rejected"] - before["rejected"] == 2
        assert health["batching"]["in_progress"] == 0

        # Prometheus: BentoML's endpoint carries ours
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
        assert 'msjoe_requests_total{code="ok",status="200"}' in text
        assert 'msjoe_requests_total{code="unsupported_video",status="415"}' in text
        assert 'msjoe_stage_seconds_bucket{le="0.5",stage="request"}' in text
        assert "msjoe_batch_size_count" in text and "msjoe_queue_depth" in text

        # the page is served at /
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<form id="ask">' in page.text and 'fetch("answer"' in page.text


@pytest.mark.slow
def test_two_cpu_workers_answer_like_one(server: str, release: str, bento_home: Path, videos: dict[str, Path],
                                         tmp_path: Path) -> None:
    """``MSJOE_WORKERS=2`` on the CPU (what bento/README.md advises for a CPU host): two
    processes, each with its models and batcher, sharing one feature cache; concurrent uploads
    of two videos all succeed and get the replies the one-worker server gives."""
    import httpx

    form = {"question": QUESTION, "options": json.dumps(OPTIONS), "budget": "4"}
    data = {name: videos[name].read_bytes() for name in ("good", "other")}

    def ask(base: str, name: str) -> httpx.Response:
        return httpx.post(f"{base}/answer", data=form, files={"video": (f"{name}.mp4", data[name], "video/mp4")},
                          timeout=120.0)

    expected = {name: ask(server, name).json() for name in data}
    env = {"BENTOML_HOME": str(bento_home), "MSJOE_CACHE_DIR": str(tmp_path / "cache"), "MSJOE_MODEL_TAG": release,
           "MSJOE_WORKERS": "2", "OMP_NUM_THREADS": "1"}
    with bentoml_serve(env, tmp_path / "serve.log", ready_timeout=180.0) as base:
        with ThreadPoolExecutor(8) as pool:
            names = ["good", "other"] * 4
            replies = list(pool.map(lambda name: ask(base, name), names))
    log = (tmp_path / "serve.log").read_text()
    assert all(f"[entry_service:msjoe:{i}] Service msjoe initialized" in log for i in (1, 2)), log[-3000:]
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
    check_reply(replies[0].json(), 4, videos["good"], release)
    for name, reply in zip(names, replies, strict=True):
        got = reply.json()
        for key in ("option", "option_scored", "queries", "frames", "video"):
            assert got[key] == expected[name][key], key


CHROMIUM = Path(os.environ.get("MSJOE_CHROMIUM", "/usr/bin/chromium"))
# headless on a machine with no network: no GPU, no first-run, no background connections
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "reports" / "screenshots" / "page.png"


@pytest.mark.slow
def test_page_in_a_real_browser(server: str, videos: dict[str, Path], tmp_path: Path) -> None:
    """Debian's Chromium, driven by Playwright: upload, ask, see the answer, the thumbnails and the
    curves; bad uploads show the API's errors. Writes reports/screenshots/page.png."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium; .ci/run installs it)")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.goto(f"{server}/")
            assert page.title() == "MSJoE: ask a video"

            def ask(video: Path, options: list[str]) -> None:
                page.set_input_files("#video", str(video))
                page.fill("#question", QUESTION)
                page.fill("#options", "\n".join(options))
                page.fill("#budget", "4")
                page.click("#submit")

            ask(videos["good"], OPTIONS)
            page.wait_for_selector("#frames img", timeout=60_000)
            assert page.locator("#frames img").count() == 4
            captions = page.locator("#frames figcaption").all_inner_texts()
            assert len(captions) == 4 and all("#" in c for c in captions)
            answer = page.inner_text("#answer")
            assert answer.startswith("Answer: ")  # every reply chooses an option
            n_queries = page.locator("#queries li").count()
            assert n_queries >= 1
            assert page.locator("#timeline polyline.curve").count() == n_queries
            assert page.locator("#timeline line.chosen").count() == 4
            assert page.inner_text("#status").startswith("Answered in")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # bad uploads: the same errors as the API gives, shown on the page
            ask(junk, OPTIONS)
            page.wait_for_selector("#status.error", timeout=60_000)
            status = page.inner_text("#status")
            assert "unsupported_video" in status and "HTTP 415" in status
            assert page.locator("#result").is_hidden()
            ask(videos["good"], OPTIONS + ["a", "b"])  # the server allows 5 (MSJOE_LIMIT_MAX_OPTIONS)
            page.wait_for_function("document.getElementById('status').textContent.includes('option_count')",
                                   timeout=60_000)
            assert "HTTP 400" in page.inner_text("#status")
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
