"""The container and cluster pieces of docs/scale-out.md, checked without a docker engine or a cluster:
the Dockerfile's build context builds the project and holds no secret, and the kubernetes base job
template passes Prefect's own validation and the structure prefect-kubernetes' worker requires."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from prefect.server.schemas.actions import DeploymentCreate, WorkPoolCreate
from prefect.utilities.templating import apply_values, find_placeholders

from tests.prefect_harness import REPO

TEMPLATE = REPO / "docs" / "scale-out" / "kubernetes-base-job-template.json"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def copies() -> list[str]:
    return [src for word, args in dockerfile() if word == "COPY" for src in shlex.split(args)[:-1]]


def test_the_image_is_python_311_slim_with_gnupg_and_git_and_runs_as_a_non_root_user():
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    installs = " ".join(args for word, args in steps if word == "RUN" and "apt-get install" in args)
    assert {"gnupg", "git"} <= set(installs.split())
    users = [(i, args) for i, (word, args) in enumerate(steps) if word == "USER"]
    assert users and users[-1][1] not in ("root", "0")
    assert all(word != "RUN" for word, _ in steps[users[-1][0]:])  # nothing runs as root after it
    cmd = json.loads(next(args for word, args in steps if word == "CMD"))
    assert cmd[:3] == ["prefect", "worker", "start"]


def test_every_file_the_dockerfile_copies_exists_and_no_secret_is_in_the_build_context():
    assert copies()
    for src in copies():
        assert (REPO / src).exists(), src
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {"keys", "ibreports.toml", ".venv", ".git"} <= ignored
    assert not any(src.startswith("keys") or src.endswith("ibreports.toml") for src in copies())


def test_the_dockerfiles_pip_install_uses_the_pinned_set_and_an_extra_that_exists():
    (install,) = [args for word, args in dockerfile() if word == "RUN" and "pip install" in args]
    words = shlex.split(install)
    assert words[words.index("-c") + 1] == "constraints.txt"
    extras = re.fullmatch(r"\.\[(.+)\]", words[-1]).group(1).split(",")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared) and "aws" in extras


def test_the_files_the_dockerfile_copies_are_enough_to_build_the_project(tmp_path):
    context = tmp_path / "context"
    for src in copies():
        target = context / src
        if (REPO / src).is_dir():
            subprocess.run(["cp", "-r", str(REPO / src), str(target)], check=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((REPO / src).read_bytes())
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path / "wheel"), str(context)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheel").glob("ibreports-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ibreports/archive/awsblock.py" in names and "flows/retrieve.py" in names


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def test_the_kubernetes_template_passes_prefects_work_pool_validation():
    pool = WorkPoolCreate(name="ibreports-k8s", type="kubernetes", base_job_template=_template())
    assert pool.base_job_template["job_configuration"]["job_manifest"]["kind"] == "Job"
    # Every deployment's job variables of prefect.yaml fit the pool's variables schema.
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        DeploymentCreate(name=deployment["name"], flow_id="00000000-0000-0000-0000-000000000000",
                         job_variables=deployment["work_pool"]["job_variables"]).check_valid_configuration(_template())


def test_the_kubernetes_template_has_what_prefect_kubernetes_worker_requires():
    # prefect-kubernetes refuses a manifest that lacks these paths or has other values there
    # (KubernetesWorkerJobConfiguration's validators against its _get_base_job_manifest()).
    manifest = _template()["job_configuration"]["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert "labels" in manifest["metadata"]
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert {container["env"], container["image"], container["args"]} == {"{{ env }}", "{{ image }}", "{{ command }}"}
    # The worker's job configuration fields, each filled from a variable.
    assert set(_template()["job_configuration"]) <= {
        "command", "env", "labels", "name", "namespace", "job_manifest", "cluster_config",
        "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output"}


def test_the_rendered_kubernetes_job_mounts_the_config_and_takes_the_passphrases_from_secrets():
    template = _template()
    variables = template["variables"]["properties"]
    defaults = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    rendered = apply_values(template["job_configuration"], {**defaults, "env": {"X": "1"}, "labels": {}})
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "ibreports-secrets"}}]
    (mount,) = container["volumeMounts"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/ibreports", True)  # the image's IBREPORTS_CONFIG folder
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "ibreports-config"
    assert volume["secret"]["defaultMode"] == 0o440  # readable by the pod's group (fsGroup), nobody else
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == _image_uid()
    assert not find_placeholders(json.dumps({k: v for k, v in rendered.items() if k != "command"}))
    env = " ".join(args for word, args in dockerfile() if word == "ENV").split()
    assert "IBREPORTS_CONFIG=/etc/ibreports/ibreports.toml" in env


def _image_uid() -> int:
    run = " ".join(args for word, args in dockerfile() if word == "RUN" and "useradd" in args)
    return int(re.search(r"--uid (\d+)", run).group(1))


def test_the_scale_out_doc_names_the_files_it_explains():
    text = (REPO / "docs" / "scale-out.md").read_text()
    for name in ("Dockerfile", "kubernetes-base-job-template.json", "PULL=from-git", "aws_credentials_block",
                 "IBREPORTS_GIT_URL", "IBREPORTS_GIT_BRANCH", "--type docker", "--type kubernetes"):
        assert name in text, name
