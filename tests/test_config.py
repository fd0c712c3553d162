"""Study configs: schema defaults, one error naming the key for every bad value,
cross-references."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from d2it import config, study
from d2it.errors import D2itError
from tests_support import HELD, INTERRUPTED, ONE_LINE, cli_outcome, error_outcome, saw

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "config" / "cpu.yaml"


def test_default_study_validates_and_fills_paper_defaults():
    cfg = study.load(CPU)
    assert cfg["grain"]["sigma"] == 0.01 and cfg["dvae"]["kl_weight"] == 1e-6
    assert cfg["dvae"]["train"]["weight_decay"] == 0.0  # filled from the schema inside $defs
    assert cfg["specs"]["d2it"]["routing"] is True and cfg["specs"]["d2it"]["fine_ratio"] == 0.5
    assert cfg["specs"]["dit"]["fine_ratio"] == 1.0 and cfg["specs"]["dit"]["patch"] == 2
    assert cfg["tracking"]["experiment"] == "d2it-cpu"


def test_shared_definition_takes_its_own_default_and_rejects_bad_values():
    cfg = config.validate({"name": "t"})
    assert cfg["data"]["num_workers"] == 0 and cfg["metrics"]["num_workers"] == "auto"
    assert (config.validate({"name": "t", "data": {"num_workers": "auto"}})["data"]["num_workers"]
            == "auto")
    with pytest.raises(D2itError, match=r"metrics\.num_workers: 'many' is not valid"):
        config.validate({"name": "t", "metrics": {"num_workers": "many"}})
    with pytest.raises(D2itError, match=r"'name' is a required property"):
        config.validate({})


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "grain": {"fine_ratoi": 0.5}}))
    with pytest.raises(D2itError, match=r"c\.yaml: grain: .*'fine_ratoi' was unexpected"):
        config.load(path)


@pytest.mark.bad_input
def test_the_published_folder_is_no_study_name(tmp_path):
    """results/published/<study> holds published copies: a study named `published` would
    write its outputs there."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "published"}))
    with pytest.raises(D2itError, match=r"c\.yaml: name: 'published' does not match") as e:
        config.load(path)
    assert error_outcome(e.value) == ONE_LINE
    path.write_text(yaml.safe_dump({"name": "published2"}))
    assert config.load(path)["name"] == "published2"


def test_spec_keys_are_checked_per_kind(tmp_path):
    cpu = yaml.safe_load(CPU.read_text())
    cpu["specs"]["dit"]["refine_depth"] = 1  # a D²iT key on a DiT spec
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cpu))
    with pytest.raises(D2itError, match=r"c\.yaml: specs\.dit: .*'refine_depth' was unexpected"):
        study.load(tmp_path / "c.yaml")
    with pytest.raises(D2itError,
                       match=r"specs\.d2it\.fine_ratio: 1\.5 is greater than the maximum of 1"):
        study.load(CPU, ["specs.d2it.fine_ratio=1.5"])
    with pytest.raises(D2itError, match=r"specs\.dgt\.heads: 0 is less than the minimum of 1"):
        study.load(CPU, ["specs.dgt.heads=0"])
    with pytest.raises(D2itError, match=r"specs\.dit\.kind: 'vit' is not one of"):
        study.load(CPU, ["specs.dit.kind=vit"])


def test_references_between_rows_and_specs_are_named():
    with pytest.raises(D2itError, match=r"tables\.table2\.rows\.dit_xl\.spec: 'ditt' "
                                        r"is not a dit or d2it spec \(known: d2it, .*, dit, .*\)"):
        study.load(CPU, ["tables.table2.rows.dit_xl.spec=ditt"])
    with pytest.raises(D2itError, match=r"tables\.table2\.rows\.dit_xl\.spec: 'dgt' "
                                        r"is not a dit or d2it"):
        study.load(CPU, ["tables.table2.rows.dit_xl.spec=dgt"])
    with pytest.raises(D2itError, match=r"specs\.d2it\.grain_model: 'dit' is not a grain spec"):
        study.load(CPU, ["specs.d2it.grain_model=dit"])
    with pytest.raises(D2itError, match=r"tables\.table2\.rows\.d2it_xl: "
                                        r"grain_source predicted needs specs\.d2it\.grain_model"):
        study.load(CPU, ["specs.d2it.grain_model=null"])
    with pytest.raises(D2itError, match=r"specs\.d2it: refine_depth 5 is outside \[0, depth = 4\]"):
        study.load(CPU, ["specs.d2it.refine_depth=5"])
    with pytest.raises(D2itError,
                       match=r"figures\.fig4\.classes: 10 is not a class of data\.classes = 10"):
        study.load(CPU, ["figures.fig4.classes=[10]"])


def test_guidance_needs_labels_to_drop(tmp_path):
    with pytest.raises(D2itError, match=r"tables\.table2\.rows\.dit_xl_g\.cfg_scale: 1\.5 needs "
                                        r"class-conditional data"):
        study.load(CPU, ["data.classes=1"])
    with pytest.raises(D2itError,
                       match=r"rows\.dit_xl_g\.cfg_scale: 1\.5 needs .*class_dropout > 0"):
        study.load(CPU, ["specs.dit.class_dropout=0"])


def test_unknown_override_and_inconsistent_region():
    with pytest.raises(D2itError,
                       match=r"with --set grain\.ratio=0\.5: grain: .*'ratio' was unexpected"):
        study.load(CPU, ["grain.ratio=0.5"])
    with pytest.raises(D2itError, match="unknown config key 'grian.ratio'"):
        study.load(CPU, ["grian.ratio=0.5"])
    with pytest.raises(D2itError, match="grain.region = 8 must be one coarse latent cell"):
        study.load(CPU, ["grain.region=8"])


def test_overrides_read_numbers_as_typed_and_name_bad_yaml():
    """YAML 1.1 reads 1e-3 as a string; a person means the number. A broken value is one line."""
    loaded = study.load(CPU, ["dvae.train.lr=1e-3", "train.lr=2E-4", "sampling.n=12"])
    assert loaded["dvae"]["train"]["lr"] == 0.001 and loaded["train"]["lr"] == 2e-4
    assert loaded["sampling"]["n"] == 12
    with pytest.raises(D2itError, match=r"^--set sampling\.seeds=\[1: the value is not valid YAML"):
        study.load(CPU, ["sampling.seeds=[1"])


@pytest.mark.bad_input
@pytest.mark.e2e
def test_cli_reports_one_line_error_and_exit_code_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ndvae: {preset: huge}\n")
    proc = subprocess.run([sys.executable, "-m", "d2it.cli", "grain", "thresholds",
                           "--config", str(path)],
                          capture_output=True, text=True)
    assert cli_outcome(proc.returncode, proc.stderr) == ONE_LINE
    assert (proc.stderr.strip().startswith("d2it: error:")
            and "dvae.preset: 'huge' is not one of" in proc.stderr)


@pytest.mark.parametrize("name", ["ffhq256.yaml", "imagenet256.yaml"])
def test_paper_studies_validate(name):
    cfg = study.load(REPO / "config" / name)
    assert (cfg["data"]["resolution"] == 256 and cfg["grain"]["region"] == 16
            and cfg["grain"]["bins"] == 256)
    assert cfg["train"]["batch_size"] == 256 and cfg["sampling"]["steps"] == 250


def test_yaml_aliases_do_not_couple_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntrain: &t {steps: 5}\ndvae: {train: *t}\n")
    cfg = config.load(path, ["train.steps=9"])
    assert cfg["train"]["steps"] == 9 and cfg["dvae"]["train"]["steps"] == 5


def test_config_readme_is_the_schema_with_every_key_described():
    """config/README.md is what `d2it study keys` writes from the schema, and no key in it is
    left without a meaning; every key of the default study appears in it."""
    from d2it.config_reference import reference

    text = reference()
    assert (REPO / "config" / "README.md").read_text() == text, \
        "config/README.md is stale: d2it study keys > config/README.md"
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| `")]
    assert rows and [r[0] for r in rows if not r[-1].removesuffix(" |").strip()] == []
    sections, keys = {}, None
    for line in text.splitlines():  # heading -> {key: its values column}
        if line.startswith("## "):
            keys = sections.setdefault(line[3:], {})
        elif line.startswith("| `"):
            cells = line.split(" | ")
            keys[cells[0].strip("| `")] = cells[1]
    resolved = study.resolve({"name": "x"}, "defaults")
    for key, value in resolved.items():
        assert key in sections["Study"]
        if isinstance(value, dict) and key not in ("specs", "tables", "figures"):
            linked = re.match(r"\[(\w+)\]", sections["Study"][key])
            for sub in value:
                assert (f"{key}.{sub}" in sections["Study"]
                        or (linked and sub in sections[linked[1]])), f"{key}.{sub}"


@pytest.mark.parametrize("argv,cause", [
    (["study", "plan", "--config", "config/cpu.yaml", "--config", "config/quick.yaml"],
     "study plan: --config given twice (config/cpu.yaml, config/quick.yaml)"),
    (["train", "dvae", "--seed", "-1"], "train dvae: argument --seed: -1 is negative"),
    (["train", "model", "--spec", "dit", "--seed", "x"], "'x' is not an integer"),
    (["nope"], "argument command: invalid choice: 'nope'"),
    (["train", "dvae", "--fine-ratio", "1.5"], "--fine-ratio: 1.5 is outside [0, 1]"),
    (["encode", "--fine-ratio", "x"], "--fine-ratio: 'x' is not a number"),
])
@pytest.mark.bad_input
def test_argument_errors_are_one_line_before_any_work(argv, cause, capsys):
    """Bad arguments: `d2it: error: ...` in one line (no usage block), exit 2; a second --config
    would otherwise have replaced the first in silence."""
    from d2it.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert cli_outcome(stop.value.code, err) == ONE_LINE and cause in err
    assert err.startswith("d2it: error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.bad_input
def test_a_yaml_syntax_error_is_one_line_naming_the_place(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {steps: 5\n")
    with pytest.raises(D2itError) as found:
        study.load(path)
    assert error_outcome(found.value) == ONE_LINE
    message = str(found.value)
    assert message.startswith(f"{path}: not valid YAML (line 3, column 1: ")
    assert "\n" not in message


@pytest.mark.bad_input
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C of a command that does not checkpoint (sampling, metrics): one line, no traceback,
    the shell's exit code for SIGINT."""
    from d2it import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_study_keys", interrupted)
    code = cli.main(["study", "keys"])
    assert cli_outcome(code, capsys.readouterr().err) == INTERRUPTED


@pytest.mark.bad_input
def test_a_job_stops_itself_when_its_snakemake_is_gone():
    """The workflow exports its pid (D2IT_PARENT_PID); a job whose Snakemake was killed gets
    SIGTERM from its watcher (a training then checkpoints and exits), not to run on unseen."""
    import signal
    import time

    from d2it.cli import _watch_parent

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists
    received = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        _watch_parent(gone.pid, every=0.05)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert received == [signal.SIGTERM]
    saw(HELD)
