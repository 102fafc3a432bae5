"""Offline validation of cluster/: what `ray up` and `kubectl apply` would accept, and what they would
silently get wrong.

* The cluster-launcher YAML goes through Ray's own `prepare_config` (merge with the AWS defaults) and
  `validate_config` (Ray's JSON schema, strict at the top level), and every node_config through botocore's
  model of EC2 RunInstances, which is what Ray passes it to.
* The KubeRay manifests are validated strictly against cluster/schemas/kuberay-ray.io-v1.json (our pinned
  subset of the ray.io/v1 API), whose pod templates and metadata refer to the strict Kubernetes 1.32
  schemas shipped by kubernetes-validate: an unknown field anywhere fails, since the API server would drop
  it without a word.
* One Ray version everywhere: the pyproject pin, the installed Ray, image tags, rayVersion, the pins in
  setup commands and the Dockerfile.
* Every promptmine command line (entrypoints and the documented commands in the files' headers) parses
  with the real `promptmine` parser; credentials only come from Kubernetes Secrets.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import re
import shlex
import tomllib
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from referencing import Registry, Resource

from pipelines.cli import build_parser

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
LAUNCHER = CLUSTER / "aws" / "cluster.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
K8S_SCHEMA_VERSION = "1.32"  # the Kubernetes schemas the pod templates are checked against
RAY = ray.__version__


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def cluster_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    return [s for s in (spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec"),
                        spec.get("rayClusterConfig")) if s]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    out = []
    for spec in cluster_specs(doc):
        out.append(("head", spec["headGroupSpec"]["template"]))
        out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in doc["spec"]:
        out.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return out


def containers(doc: dict) -> list[dict]:
    return [c for _, t in pod_templates(doc) for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]


# ---- KubeRay manifests against the pinned schemas ---------------------------------------------------
@lru_cache(maxsize=1)
def kuberay_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((CLUSTER / "schemas" / "kuberay-ray.io-v1.json").read_text())
    k8s = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / \
        f"v{K8S_SCHEMA_VERSION}.0-local-strict"
    resources = [json.loads((k8s / name).read_text()) for name in ("_definitions.json", "podtemplatespec-v1.json")]
    registry = Registry().with_resources((r["$id"], Resource.from_contents(r)) for r in resources)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in kuberay_validator().iter_errors(doc)]


def test_the_manifests_are_all_there():
    assert [p.name for p in KUBERAY] == ["raycluster.yaml", "rayjob-mine.yaml", "rayjob-train.yaml", "rayservice.yaml"]
    assert [manifest(p.name)["kind"] for p in KUBERAY] == ["RayCluster", "RayJob", "RayJob", "RayService"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_strict_schemas(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1
    assert schema_errors(docs[0]) == []


def _mutations():
    """(name, manifest, change, the field path the error must name): mistakes Kubernetes would swallow."""
    def set_(path, value):
        def change(doc):
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return change
    worker = ["spec", "workerGroupSpecs", 0]
    head_container = ["spec", "headGroupSpec", "template", "spec", "containers", 0]
    return [
        ("typo in a spec field", "raycluster.yaml", set_(["spec", "workerGroupSpec"], []), "spec"),
        ("unknown worker group field", "raycluster.yaml", set_([*worker, "maxReplica"], 3), "spec.workerGroupSpecs.0"),
        ("unknown container field", "raycluster.yaml", set_([*head_container, "resource"], {}),
         "spec.headGroupSpec.template.spec.containers.0"),
        ("unknown env source field", "raycluster.yaml",
         set_([*head_container, "env", 0, "valueFrom", "secretRef"], {"name": "x"}),
         "spec.headGroupSpec.template.spec.containers.0.env.0.valueFrom"),
        ("replicas as a string", "raycluster.yaml", set_([*worker, "replicas"], "2"), "spec.workerGroupSpecs.0.replicas"),
        ("rayStartParams value not a string", "raycluster.yaml",
         set_(["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 0), "spec.headGroupSpec.rayStartParams.num-cpus"),
        ("unknown upscaling mode", "raycluster.yaml", set_(["spec", "autoscalerOptions", "upscalingMode"], "Fast"),
         "spec.autoscalerOptions.upscalingMode"),
        ("entrypoint as a list", "rayjob-mine.yaml", set_(["spec", "entrypoint"], ["promptmine", "mine"]),
         "spec.entrypoint"),
        ("both an own cluster and a selector", "rayjob-train.yaml",
         set_(["spec", "clusterSelector"], {"ray.io/cluster": "promptmine"}), "spec"),
        ("serveConfigV2 as a mapping", "rayservice.yaml", set_(["spec", "serveConfigV2"], {"applications": []}),
         "spec.serveConfigV2"),
        ("unknown metadata field", "rayservice.yaml", set_(["metadata", "label"], {"a": "b"}), "metadata"),
        ("wrong apiVersion", "rayjob-mine.yaml", set_(["apiVersion"], "ray.io/v1alpha1"), "apiVersion"),
    ]


@pytest.mark.parametrize("name,file,change,where", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_wrong_manifest_fails_where_it_is_wrong(name, file, change, where):
    doc = manifest(file)
    change(doc)
    errors = schema_errors(doc)
    assert errors, f"{name}: accepted"
    assert any(e.startswith(f"{where}:") for e in errors), errors


# ---- one Ray version ---------------------------------------------------------------------------------
IMAGE = re.compile(r"^(?P<repo>[\w./-]+):(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-gpu$")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _check_image(image: str, repo: str) -> None:
    m = IMAGE.match(image)
    assert m, f"image {image!r} is not REPO:<ray version>-py3XX-gpu"
    assert m["repo"].endswith(repo) and m["ray"] == RAY, image
    python = Version(f"3.{m['py'][1:]}")
    assert python in SpecifierSet(_pyproject()["project"]["requires-python"]), image


def test_ray_is_pinned_to_the_installed_version():
    [req] = [Requirement(r) for r in _pyproject()["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert str(req.specifier) == f"=={RAY}"
    assert {"data", "train", "serve"} <= req.extras


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_images_and_ray_version_equal_the_pin(path):
    doc = manifest(path.name)
    for spec in cluster_specs(doc):
        assert spec["rayVersion"] == RAY
    for c in containers(doc):
        _check_image(c["image"], "/promptmine")


def test_launcher_and_dockerfile_use_the_pinned_ray():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    _check_image(cfg["docker"]["image"], "rayproject/ray")
    pins = re.findall(r"ray\[[\w,]+\]==([\d.]+)", " ".join(cfg["setup_commands"]))
    assert pins == [RAY]
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG RAY_VERSION=(.+)$", text, re.M)[1] == RAY
    assert re.search(r"^FROM (.+)$", text, re.M)[1] == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    assert 'ray[data,train,serve]==${RAY_VERSION}' in text


# ---- command lines -----------------------------------------------------------------------------------
def _flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Every option string of the (sub)parsers that ``argv`` selects."""
    flags = {f for a in parser._actions for f in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((w for w in argv if w in action.choices), None)
            if chosen:
                flags |= _flags(action.choices[chosen], argv[argv.index(chosen) + 1:])
    return flags


def parse_promptmine(command: str):
    """Parse a command line with the real parser; abbreviated flags (argparse accepts `--gpus` for
    `--gpus-per-actor`) are refused too, so a manifest never depends on a prefix staying unique."""
    argv = shlex.split(command)
    assert argv[0] == "promptmine", command
    parser = build_parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:  # argparse's way to reject a subcommand or flag
        raise AssertionError(f"promptmine rejects {command!r}") from e
    unknown = [w.split("=")[0] for w in argv if w.startswith("--") and w.split("=")[0] not in _flags(parser, argv[1:])]
    assert not unknown, f"promptmine rejects {command!r}: abbreviated or unknown flags {unknown}"
    return args


def documented_commands(path: Path) -> list[str]:
    """`promptmine ...` command lines in a file's comments, backslash continuations joined."""
    lines = [line.lstrip()[1:] for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    text = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))  # examples are indented; prose is not
    return [m.group(1).strip() for m in re.finditer(r"(?:^\s{2,}|--\s+)(promptmine [^\n#]*)", text, re.M)]


def test_the_parser_rejects_what_it_should():
    with pytest.raises(AssertionError, match="rejects"):
        parse_promptmine("promptmine mine --input s3://b/in --output s3://b/out --gpu-per-actor 1")
    with pytest.raises(AssertionError, match="abbreviated"):
        parse_promptmine("promptmine mine --input s3://b/in --output s3://b/out --gpus 1")  # argparse takes it
    with pytest.raises(AssertionError, match="rejects"):
        parse_promptmine("promptmine train sft --data s3://b/d --output s3://b/o")  # --model is required
    with pytest.raises(AssertionError, match="rejects"):
        parse_promptmine("promptmine mines --input s3://b/in")


def test_mine_job_entrypoint():
    doc = manifest("rayjob-mine.yaml")
    args = parse_promptmine(doc["spec"]["entrypoint"])
    assert args.command == "mine" and args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.address == "auto" and args.credentials == "worker" and args.gpus_per_actor == 1
    [gpu] = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert args.actors * args.gpus_per_actor <= gpu["maxReplicas"] * gpus  # the autoscaler can place every actor


def test_train_job_entrypoint():
    doc = manifest("rayjob-train.yaml")
    args = parse_promptmine(doc["spec"]["entrypoint"])
    assert (args.command, args.stage) == ("train", "sft")
    assert [d[:5] for d in args.data] == ["s3://"] and args.output.startswith("s3://") and args.address == "auto"
    [gpu] = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert args.workers == gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]  # one pod per DDP rank
    assert args.gpus_per_worker == int(limits["nvidia.com/gpu"])
    assert args.cpus_per_worker <= int(limits["cpu"])


@pytest.mark.parametrize("path", [*KUBERAY, LAUNCHER, DOCKERFILE], ids=lambda p: p.name)
def test_documented_commands_parse(path):
    for command in documented_commands(path):
        parse_promptmine(command)


def test_documented_commands_are_found():
    assert len(documented_commands(CLUSTER / "kuberay" / "raycluster.yaml")) == 1
    assert len(documented_commands(LAUNCHER)) == 1


# ---- resources and credentials -----------------------------------------------------------------------
@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_gpu_worker_groups_and_autoscaling_bounds(path):
    for spec in cluster_specs(manifest(path.name)):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs no tasks
        assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
        for group in spec["workerGroupSpecs"]:
            res = group["template"]["spec"]["containers"][0]["resources"]
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] >= 1
            assert res["limits"]["cpu"] == res["requests"]["cpu"] and res["limits"]["memory"] == res["requests"]["memory"]
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            if spec.get("enableInTreeAutoscaling"):
                assert group["maxReplicas"] > group["minReplicas"]
        # Ray's object store needs a real /dev/shm in every pod
        for _, template in pod_templates({"kind": "RayCluster", "spec": spec}):
            mounts = template["spec"]["containers"][0]["volumeMounts"]
            assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts
            assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in template["spec"]["volumes"])


SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_credentials_come_only_from_secrets(path):
    doc = manifest(path.name)
    for c in containers(doc):
        env = {e["name"]: e for e in c.get("env", [])}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "promptmine-s3", (c["name"], name)
        for name, e in env.items():
            if SECRET_NAME.search(name):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (c["name"], name)
    assert "runtimeEnvYAML" not in doc["spec"]  # no env_vars (or secrets) through Ray


def test_no_secret_material_in_any_cluster_file():
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)(secret_access_key|password|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text), path


# ---- the RayService's Serve config -------------------------------------------------------------------
def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def unknown_serve_keys(cfg: dict) -> list[str]:
    """Keys Ray's Serve schemas do not define. Those schemas ignore unknown keys (pydantic's default),
    so `serve deploy` would drop a misspelt option silently; this makes the check strict."""
    from ray.serve.schema import (DeploymentSchema, HTTPOptionsSchema, RayActorOptionsSchema,
                                  ServeApplicationSchema, ServeDeploySchema)

    def extra(obj: dict, model, where: str) -> list[str]:
        return [f"{where}{k}" for k in obj if k not in model.model_fields]

    out = extra(cfg, ServeDeploySchema, "") + extra(cfg.get("http_options", {}), HTTPOptionsSchema, "http_options.")
    for i, app in enumerate(cfg.get("applications", [])):
        out += extra(app, ServeApplicationSchema, f"applications.{i}.")
        for j, d in enumerate(app.get("deployments", [])):
            out += extra(d, DeploymentSchema, f"applications.{i}.deployments.{j}.")
            out += extra(d.get("ray_actor_options", {}), RayActorOptionsSchema,
                         f"applications.{i}.deployments.{j}.ray_actor_options.")
    return out


def test_serve_config_is_a_valid_serve_deploy_config_matching_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    from serve.settings import AppArgs

    service = serve_config(manifest("rayservice.yaml"))
    ServeDeploySchema.model_validate(service)  # Ray's own schema of `serve deploy` configs: types, ranges
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert unknown_serve_keys(service) == [] and unknown_serve_keys(local) == []
    assert len(service["applications"]) == len(local["applications"]) == 1
    [app], [ref] = service["applications"], local["applications"]
    assert {k: app[k] for k in ("name", "route_prefix", "import_path")} == \
        {k: ref[k] for k in ("name", "route_prefix", "import_path")}
    args = AppArgs.model_validate(app["args"])  # what build_app will be given
    assert args.preset == "sd2"
    assert args.rewrite_model == "s3://promptmine-data/models/ppo"  # a PPO output: the replica serves its best/
    deployments = {d["name"]: d for d in app["deployments"]}
    reference = {d["name"]: d for d in ref["deployments"]}
    assert deployments.keys() == reference.keys()
    for name, d in deployments.items():
        assert d.get("user_config") == reference[name].get("user_config"), name
        assert d["max_ongoing_requests"] == reference[name]["max_ongoing_requests"], name
    # the model deployments share the GPU of one worker pod
    [gpu_group] = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod_gpus = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    model_gpus = [deployments[n]["ray_actor_options"]["num_gpus"] for n in ("RewriteModel", "InvertModel")]
    assert all(g > 0 for g in model_gpus) and sum(model_gpus) <= pod_gpus
    assert service["http_options"]["host"] == "0.0.0.0"  # reachable through the serve service


def test_a_wrong_serve_config_is_rejected():
    from ray.serve.schema import ServeDeploySchema

    service = serve_config(manifest("rayservice.yaml"))
    bad = copy.deepcopy(service)
    bad["applications"][0]["deployments"][0]["max_batch_size"] = 8  # belongs in user_config
    ServeDeploySchema.model_validate(bad)  # Ray itself lets it through and would ignore it ...
    assert unknown_serve_keys(bad) == ["applications.0.deployments.0.max_batch_size"]  # ... we do not
    bad = copy.deepcopy(service)
    bad["applications"][0]["deployments"][1]["num_replicas"] = "two"
    with pytest.raises(Exception, match="num_replicas"):
        ServeDeploySchema.model_validate(bad)


# ---- the cluster launcher YAML --------------------------------------------------------------------
def prepared(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    merged = prepare_config(copy.deepcopy(cfg))
    validate_config(merged)
    return merged


def node_config_errors(node_config: dict) -> str:
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    return ParamValidator().validate({**node_config, "MinCount": 1, "MaxCount": 1}, shape).generate_report()


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_config_passes_rays_own_validation():
    merged = prepared(launcher())
    assert merged["provider"]["type"] == "aws" and merged["head_node_type"] == "ray.head.cpu"
    assert set(merged["available_node_types"]) == {"ray.head.cpu", "ray.worker.gpu"}  # no default types merged in
    gpu = merged["available_node_types"]["ray.worker.gpu"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance family
    assert gpu["min_workers"] <= gpu["max_workers"] <= merged["max_workers"]
    assert merged["available_node_types"]["ray.head.cpu"]["resources"] == {"CPU": 0}
    for name, node_type in merged["available_node_types"].items():
        assert node_config_errors(node_type["node_config"]) == "", name
    # promptmine is installed from the folder file_mounts copies
    [(remote, local)] = merged["file_mounts"].items()
    assert local == "." and any(remote in cmd and "pip install" in cmd for cmd in merged["setup_commands"])


@pytest.mark.parametrize("change,error", [
    (lambda c: c.update(max_worker=8), "Additional properties"),  # a typo at the top level
    (lambda c: c.update(idle_timeout_minutes="ten"), "is not of type"),
    (lambda c: c["docker"].update(imge="rayproject/ray"), "Additional properties"),
    (lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].update(GPU=0.5), "is not of type"),
    (lambda c: c.update(head_node_type="ray.head.default"), "must be one of"),
], ids=["unknown-key", "wrong-type", "unknown-docker-key", "fractional-resource", "missing-head-type"])
def test_launcher_config_with_a_mistake_is_rejected(change, error):
    cfg = launcher()
    change(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=error):
        prepared(cfg)


def test_node_config_with_a_mistake_is_rejected():
    node_config = launcher()["available_node_types"]["ray.worker.gpu"]["node_config"]
    assert "Unknown parameter in input: \"InstanceTyp\"" in node_config_errors(
        {**{k: v for k, v in node_config.items() if k != "InstanceType"}, "InstanceTyp": "g5.2xlarge"})
    assert "Invalid type for parameter BlockDeviceMappings[0].Ebs.VolumeSize" in node_config_errors(
        {**node_config, "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": "200"}}]})
