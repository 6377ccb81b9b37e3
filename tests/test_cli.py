"""The `tpo` command line: every subcommand is registered; user errors exit 2 with the message, no traceback."""

from runtime.cli import build_parser, main


def test_every_subcommand_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) >= {"ask", "info", "data", "train", "eval", "export", "verify", "build", "demo", "run",
                            "stream", "bench"}


def test_missing_and_corrupt_videos_exit_2_with_the_problem(tmp_path, capsys):
    assert main(["ask", "--checkpoint", "untrained-tiny", "--video", str(tmp_path / "nope.mp4"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["ask", "--checkpoint", "untrained-tiny", "--video", str(bad), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err


def test_ask_json_on_a_generated_video(sample_videos, capsys):
    import json

    assert main(["ask", "--video", sample_videos[0], "--prompt", "Where is the red circle?", "--json",
                 "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["prompt"] == "Where is the red circle?" and len(out["results"][0]["token_ids"]) <= 4
