"""The package's one home for each rule: devices, recipes, errors and the batch protocol.

Each test is about a rule that used to live in two or three places (the CLI's copy, the
library's copy): here the library itself must keep it, so a notebook, ``load_or_train`` and a
``torchrun`` worker get the same one-line errors as the command line.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mnist_dissected
from mnist_dissected import batches, devices, errors, pretrained, recipes
from mnist_dissected.data import TensorBatches
from mnist_dissected.sharding import ShardedBatches

PACKAGE = Path(mnist_dissected.__file__).parent


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    "value, complaint",
    [
        ("banana", "is not a device"),
        ("meta", "cannot train a model"),
        ("mps", "MPS is not available"),
        ("cuda", "CUDA is not available"),
    ],
)
def test_pick_device_refuses_what_cannot_train_here_argument_or_variable(
    value, complaint, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.delenv(devices.DEVICE_ENV_VAR, raising=False)
    with pytest.raises(errors.DeviceError, match=complaint) as given:
        devices.pick_device(value)
    assert "\n" not in str(given.value)
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, value)
    with pytest.raises(errors.DeviceError) as from_variable:
        devices.pick_device()
    assert str(from_variable.value) == f"${devices.DEVICE_ENV_VAR}={value}: {given.value}"


def test_load_or_train_with_a_bad_variable_gets_the_same_error_not_a_runtime_error(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, "banana")
    with pytest.raises(errors.DeviceError, match=r"\$MNIST_DISSECTED_DEVICE=banana: "):
        pretrained.load_or_train(tmp_path / "net.pt")
    assert not any(tmp_path.iterdir()), "nothing written"


def test_no_accel_means_the_cpu_and_contradicts_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, "cuda")
    assert devices.pick_device(no_accel=True) == torch.device("cpu")
    with pytest.raises(errors.DeviceError, match="contradict"):
        devices.pick_device("cuda", no_accel=True)


def test_synchronize_waits_on_the_device_it_is_given(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    devices.synchronize("cpu")
    assert waited == [], "nothing to wait for on the CPU"
    devices.synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]


def test_a_ddp_worker_checks_its_device_by_the_same_rule(monkeypatch):
    from mnist_dissected.process_group import World, ddp_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(devices.DEVICE_ENV_VAR, raising=False)
    with pytest.raises(errors.DeviceError, match="is not a device"):
        ddp_device("banana", World())
    assert ddp_device(None, World()) == torch.device("cpu")
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, "meta")
    with pytest.raises(errors.DeviceError, match=r"\$MNIST_DISSECTED_DEVICE=meta: "):
        ddp_device(None, World())
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, "cpu")
    assert ddp_device(None, World()) == torch.device("cpu")


def test_parts_1_to_3_do_not_import_part_4s_training_module():
    """Seeding and devices are Part 4's lesson but every part's need: they live in devices."""
    for notebook in ("1_mnist_load", "2_mnist_model", "3_mnist_backprop"):
        text = (PACKAGE.parent / "notebooks" / f"{notebook}.ipynb").read_text()
        assert "mnist_dissected.train import" not in text, notebook


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "base, overrides, complaint",
    [
        ("fast", {"momentum": 0.9}, "momentum is SGD's; the fast recipe trains with adam"),
        ("fast", {"gamma": 0.7}, "gamma drives a StepLR schedule; the fast recipe has its own"),
        ("classic", {"gamma": 0.7}, "give schedule='step' with it"),
        ("classic", {"schedule": "step"}, "schedule 'step' needs gamma"),
        ("classic", {"batch_size": 55_001}, "more than the 55,000 training images"),
        ("classic", {"batch_size": 0}, "batch_size must be an integer of at least 1"),
        ("classic", {"epochs": 1.5}, "epochs must be an integer"),
        ("classic", {"lr": float("nan")}, "lr must be a positive number"),
        ("classic", {"lr": -0.1}, "lr must be a positive number"),
        ("classic", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ("classic", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("classic", {"optimizer": "adagrad"}, "unknown optimizer 'adagrad'"),
        ("classic", {"schedule": "cosine"}, "unknown schedule 'cosine'"),
        ("classic", {"data_path": "disk"}, "unknown data_path 'disk'"),
        ("classic", {"log_interval": 0}, "log_interval must be None or at least 1"),
        ("classic", {"momentumm": 0.9}, "a recipe has no field momentumm"),
    ],
)
def test_a_recipe_checks_itself_when_built(base, overrides, complaint):
    with pytest.raises(errors.RecipeError, match=complaint):
        recipes.get_recipe(base, **overrides)


def test_a_recipe_built_directly_is_checked_too():
    with pytest.raises(errors.RecipeError, match="momentum is SGD's"):
        recipes.Recipe("mine", batch_size=32, lr=0.001, epochs=1, momentum=0.9, optimizer="adam")
    with pytest.raises(errors.RecipeError, match="momentum is SGD's"):
        dataclasses.replace(recipes.RECIPES["fast"], momentum=0.5)


def test_none_overrides_are_unset_flags_and_change_nothing():
    assert recipes.get_recipe("fast", momentum=None, gamma=None) == recipes.RECIPES["fast"]


def test_make_optimizer_takes_every_number_from_the_recipe():
    """No hidden default: StepLR's gamma is the recipe's, whatever it is."""
    for gamma in (0.3, 0.9):
        recipe = recipes.get_recipe("classic", schedule="step", gamma=gamma)
        _, scheduler = recipes.make_optimizer(torch.nn.Linear(1, 1), recipe, steps_per_epoch=2)
        assert scheduler.gamma == gamma and scheduler.step_size == 2
    source = inspect.getsource(recipes.make_optimizer)
    assert "0.7" not in source.split('"""')[-1], "a default hidden in the code"


def test_run_options_do_not_retrain_a_cached_model_but_training_fields_do():
    fast = recipes.RECIPES["fast"]
    same = recipes.get_recipe(fast, log_interval=5, compile=True, cuda_graph=True)
    assert pretrained.recipe_key(same, 1) == pretrained.recipe_key(fast, 1)
    assert pretrained.default_checkpoint_path(same) == pretrained.default_checkpoint_path(fast)
    other = recipes.get_recipe(fast, epochs=4)
    assert pretrained.recipe_key(other, 1) != pretrained.recipe_key(fast, 1)


# --------------------------------------------------------------------------- errors


def package_error_classes() -> list[type[BaseException]]:
    """Every exception class defined anywhere in the package (read from the source)."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__main__":  # importing it runs the CLI
            continue
        tree = ast.parse(path.read_text())
        module = __import__(f"mnist_dissected.{path.stem}", fromlist=["_"])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                cls = getattr(module, node.name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    return found


def test_every_error_of_the_package_derives_from_one_base():
    classes = package_error_classes()
    names = {cls.__name__ for cls in classes}
    assert {"CheckpointError", "CorruptDataError", "WorldError", "RecipeError"} <= names
    assert {"DeviceError", "DrawingError", "MNISTNotFoundError", "DataWriteError"} <= names
    for cls in classes:
        assert issubclass(cls, errors.MnistDissectedError), cls


def test_the_cli_catches_the_base_class_not_names():
    from mnist_dissected import cli

    source = inspect.getsource(cli.main)
    assert "MnistDissectedError" in source and "__name__" not in source


def test_the_cli_reports_any_package_error_in_one_line(monkeypatch, capsys):
    from mnist_dissected import cli

    class Surprise(errors.MnistDissectedError):
        pass

    def fail(*args, **kwargs):
        raise Surprise("a new kind of failure, explained")

    monkeypatch.setattr("mnist_dissected.train.train_model", fail)
    assert cli.main(["train", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == "error: a new kind of failure, explained\n"


# --------------------------------------------------------------------------- batch sources


def sources() -> dict[str, object]:
    images, targets = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    whole = TensorBatches(images, targets, batch_size=3, shuffle=True, seed=4)
    loader = DataLoader(TensorDataset(images, targets), batch_size=3, shuffle=True)
    return {
        "tensors": whole,
        "loader": loader,
        "shard": ShardedBatches(
            TensorBatches(images, targets, batch_size=3, shuffle=True, seed=4),
            rank=1,
            world_size=2,
        ),
    }


@pytest.mark.parametrize(
    "name, samples, count", [("tensors", 10, 4), ("loader", 10, 4), ("shard", 5, 2)]
)
def test_every_batch_source_answers_the_protocol(name, samples, count):
    source = batches.as_batch_source(sources()[name])
    assert isinstance(source, batches.BatchSource)
    assert source.num_samples == samples == batches.num_samples(sources()[name])
    assert len(source) == count
    x, y = source.sample_batch()
    assert y.tolist() == [0, 1, 2], "the first samples, no shuffle drawn"


def test_sample_batch_draws_no_shuffle():
    whole, again = sources()["tensors"], sources()["tensors"]
    batches.sample_batch(whole, "cpu")
    assert [y.tolist() for _, y in whole] == [y.tolist() for _, y in again]


@pytest.mark.parametrize("name", ["tensors", "loader"])
def test_numbered_batches_split_an_unshuffled_split_whole_batches_among_ranks(name):
    images, targets = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    split = {
        "tensors": TensorBatches(images, targets, batch_size=3),
        "loader": DataLoader(TensorDataset(images, targets), batch_size=3),
    }[name]
    got = {
        rank: [(i, y.tolist()) for i, (_, y) in batches.numbered_batches(split, start=rank, step=3)]
        for rank in range(3)
    }
    assert got == {
        0: [(0, [0, 1, 2]), (3, [9])],
        1: [(1, [3, 4, 5])],
        2: [(2, [6, 7, 8])],
    }
    assert [i for i, _ in batches.numbered_batches(split, start=0, step=1, limit=2)] == [0, 1]


def test_any_other_iterable_is_walked_and_has_no_size():
    plain = [(torch.zeros(1), torch.tensor([k])) for k in range(5)]
    assert batches.num_samples(plain) is None
    assert [i for i, _ in batches.numbered_batches(plain, start=1, step=2)] == [1, 3]
    with pytest.raises(TypeError, match="without a shuffle"):
        batches.sample_batch(iter(plain), "cpu")


def test_nobody_sniffs_class_names_or_batch_attributes():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "__name__ ==" not in text.replace('if __name__ == "__main__"', ""), path.name
        assert "type(sampler).__name__" not in text and '"DistributedSampler"' not in text
        assert 'hasattr(batches, "images")' not in text and "_is_tensor_batches" not in text


# --------------------------------------------------------------------------- the layout


def package_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports, at the top or inside a
    function (a lazy import is still a dependency)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:
                    edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "mnist_dissected."
            ):
                edges.add(node.module.split(".")[1])
        graph[path.stem] = edges - {path.stem}
    return graph


def test_the_package_imports_form_no_cycle():
    graph, done, path = package_imports(), set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join([*path, module])
        if module in done:
            return
        path.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_the_rules_live_low_in_the_package():
    graph = package_imports()
    assert graph["errors"] == set() and graph["argtypes"] == set() and graph["batches"] == set()
    assert graph["devices"] == {"errors"} and graph["recipes"] == {"errors"}
    assert "cli" not in graph["dist_demo"], "dist_demo borrows nothing from the CLI"
    assert not graph["process_group"] & {"sharding", "distributed", "launch", "train"}
    assert graph["process_group"] <= {"errors", "devices"}
    for module, imported in graph.items():
        if module not in ("cli", "__main__"):
            assert "cli" not in imported, f"{module} imports the CLI"


def test_no_module_is_over_about_400_lines_and_each_says_its_job_and_part():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 440, path.name
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if path.stem not in ("__init__", "__main__"):
            assert "Part" in docstring or "every part" in docstring or "all parts" in docstring, (
                path.name
            )
