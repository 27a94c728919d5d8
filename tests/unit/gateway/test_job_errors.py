import json
from pathlib import Path

from app.dispatch import job_errors

RECORDINGS = Path(__file__).parents[2] / "data" / "recordings"


def test_scrub_keeps_file_names_and_drops_directories() -> None:
    text = "No such file: '/home/ubuntu/ComfyUI/models/checkpoints/sd15.safetensors' (C:\\Users\\bob\\x.png)"
    out = job_errors.scrub(text)
    assert "sd15.safetensors" in out and "x.png" in out
    assert "/home" not in out and "ubuntu" not in out and "Users" not in out


def test_execution_error_from_the_recording_has_no_traceback_or_paths() -> None:
    scenario = json.loads((RECORDINGS / "scenario_failing_job.json").read_text())
    msg = next(
        m["json"]["data"]
        for m in scenario["ws_messages"]
        if m.get("json", {}).get("type") == "execution_error"
    )
    err = job_errors.execution_error(
        node_id=msg["node_id"],
        node_type=msg["node_type"],
        exception_type=msg["exception_type"],
        message=msg["exception_message"],
    )
    assert err["type"] == "execution_error"
    assert err["node_id"] == msg["node_id"] and err["node_type"] == "HarnessFail"
    assert "harness failure" in err["message"]
    dumped = json.dumps(err)
    assert "Traceback" not in dumped and "<COMFYUI_ROOT>" not in dumped and "traceback" not in err


def test_invalid_workflow_keeps_reasons_per_node_without_extra_info() -> None:
    bodies = json.loads((RECORDINGS / "errors_prompt_400.json").read_text())
    # Every recorded 400 body with node errors turns into a user-facing error naming the node.
    seen = 0
    for case in bodies.values() if isinstance(bodies, dict) else bodies:
        body = case.get("response_json") or case.get("body") if isinstance(case, dict) else None
        if not isinstance(body, dict) or not body.get("node_errors"):
            continue
        err = job_errors.invalid_workflow(body["error"], body["node_errors"])
        seen += 1
        assert err["type"] == "invalid_workflow"
        assert err["node_id"] in body["node_errors"]
        assert err["node_errors"][err["node_id"]]["errors"], err
        assert "extra_info" not in json.dumps(err)
    assert seen >= 3
