"""The README's stage-by-stage walkthrough is a sequence a user can paste: every directory
a command reads was written by an earlier command of it (issue 14 item 9: step 5 used
``runs/rm-gold``, which no step made), and every key=value it passes is a config key under its current name."""

import re
import shlex
from pathlib import Path

from ambient_rlhf.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"
READS = ("--data", "--model", "--policy", "--reward", "--reference", "--judge", "--proxy")
BUILT_IN = ("default", "tiny-random")


def walkthrough() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## Stage by stage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split(" #", 1)[0]) for line in block.splitlines()
            if line.strip().startswith("ambient ")]


def test_every_directory_read_was_written_before():
    cmds = walkthrough()
    assert len(cmds) >= 8
    written: list[str] = []
    for argv in cmds:
        reads = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in READS]
        if argv[1] == "report":
            reads.append(argv[2])
        for path in reads:
            if path in BUILT_IN:
                continue
            p = path.rstrip("/")
            # a directory an earlier command wrote, or one holding such directories (report runs/)
            assert any(w == p or w.startswith(p + "/") for w in written), f"{' '.join(argv)}: {path} is never made"
        if "--out" in argv:
            written.append(argv[argv.index("--out") + 1].rstrip("/"))
    assert {"data/aa", "runs/sft", "runs/rm", "runs/rm-gold", "runs/rl", "runs/eval"} <= set(written)


def test_every_key_value_is_a_config_key(warnings_seen):
    from ambient_rlhf.data.build import DataConfig
    from ambient_rlhf.eval.policy_eval import EvalConfig
    from ambient_rlhf.train.dpo import DPOConfig
    from ambient_rlhf.train.reward import RewardConfig
    from ambient_rlhf.train.rl import RLConfig
    from ambient_rlhf.train.sft import SFTConfig

    classes = {"data": DataConfig, "sft": SFTConfig, "rm": RewardConfig, "rl": RLConfig, "dpo": DPOConfig, "eval": EvalConfig}
    checked = 0
    for argv in walkthrough():
        keys = [a for a in argv[2:] if re.match(r"^[A-Za-z_][\w.]*=", a)]
        if argv[1] in classes and keys and argv[2] not in ("eval", "combine"):
            load_config(classes[argv[1]], None, keys)  # an unknown or renamed-away key raises
            checked += 1
    assert checked >= 2
