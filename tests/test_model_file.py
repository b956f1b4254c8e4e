"""model.json and shared_model.json: the files the code writes match the schema and load;
a bad file is refused on loading, with one line naming the file and the field."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft import modelfile
from segsoft.batch import SegmentOptions, apply_batch, run_batch
from segsoft.errors import SegsoftError
from segsoft.outputs import load_model

jsonschema = pytest.importorskip("jsonschema")

# the kinds of model a run can write: every model, every covariance, position features with
# smoothing, k chosen automatically and each colour space
KINDS = {
    "gmm-full": dict(model="gmm", covariance="full"),
    "gmm-tied": dict(model="gmm", covariance="tied"),
    "gmm-diag": dict(model="gmm", covariance="diag"),
    "gmm-spherical": dict(model="gmm", covariance="spherical"),
    "soft-kmeans": dict(model="soft-kmeans"),
    "soft-kmeans-beta": dict(model="soft-kmeans", beta=2.0),
    "fcm": dict(model="fcm", color="rgb"),
    "spatial-smooth": dict(model="gmm", spatial_weight=1.0, smoothing=1.0, color="hsv"),
    "auto": dict(k="auto", k_range=(2, 4), color="gray"),
}


def picture(seed: int = 0, size: int = 16) -> np.ndarray:
    """A small image with three colour areas and some noise."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((size, size, 3))
    rgb[:, : size // 3] = (0.8, 0.2, 0.1)
    rgb[:, size // 3 : 2 * size // 3] = (0.1, 0.6, 0.3)
    rgb[:, 2 * size // 3 :] = (0.2, 0.2, 0.9)
    rgb += rng.normal(0, 0.05, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """model.json of every kind in KINDS, and of an apply run with --regions."""
    root = tmp_path_factory.mktemp("written")
    files = {}
    for name, kwargs in KINDS.items():
        seg = segsoft.segment(picture(), **{"k": 3, **kwargs})
        seg.save(root / name)
        files[name] = root / name / "model.json"
    image = root / "pic.png"
    PILImage.fromarray(picture(1)).save(image)
    report = apply_batch(files["gmm-full"], [image], root / "applied", jobs=1, regions=True)
    assert report.count("ok") == 1, report.rows
    files["applied"] = root / "applied" / "pic" / "model.json"
    return files


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """shared_model.json of a --shared-model batch and one image's model.json from it."""
    root = tmp_path_factory.mktemp("shared")
    for i in range(2):
        PILImage.fromarray(picture(i, 12)).save(root / f"p{i}.png")
    report = run_batch([root], root / "out", SegmentOptions(k=2), jobs=1, shared_model=True)
    assert report.count("ok") == 2, report.rows
    return {"shared": root / "out" / "shared_model.json", "image": root / "out" / "p0" / "model.json"}


@pytest.fixture(scope="module")
def validator():
    schema = modelfile.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ----------------------------------------------------------------------------- good files


def test_every_written_model_json_matches_the_schema_and_loads(written, validator):
    for name, path in written.items():
        record = json.loads(path.read_text())
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(record)]
        assert not errors, (name, errors)
        model, spec, loaded = load_model(path)
        assert loaded == record and model.n_components == record["result"]["k"], name
        assert spec.n_features == len(record["features"]["names"]), name


def test_shared_model_json_matches_the_schema_and_loads(shared, validator):
    for name, path in shared.items():
        record = json.loads(path.read_text())
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(record)]
        assert not errors, (name, errors)
        load_model(path)


def test_a_loaded_model_gives_the_same_memberships(written):
    model, spec, _ = load_model(written["spatial-smooth"])
    seg = segsoft.segment(picture(), k=3, **KINDS["spatial-smooth"])
    again = segsoft.apply_model(picture(), model, spec, smoothing=1.0)
    np.testing.assert_allclose(again.probabilities, seg.probabilities, atol=1e-5)


def test_the_schema_is_not_vacuous(written, validator):
    record = json.loads(written["gmm-full"].read_text())
    for mutate in (
        lambda r: r.update(extra=1),
        lambda r: r["settings"].update(k="three"),
        lambda r: r["settings"].update(smoothing=1e6),
        lambda r: r["model"]["fitted"].update(covariances_=[1.0, 2.0]),
        lambda r: r["model"].update(type="KMeans"),
        lambda r: r["clusters"][0].pop("mean_features"),
    ):
        bad = copy.deepcopy(record)
        mutate(bad)
        assert not validator.is_valid(bad)


def test_the_schema_states_the_loaders_limits():
    defs = modelfile.schema()["$defs"]
    assert defs["k"]["maximum"] == modelfile.max_k()
    assert defs["trace"]["maxItems"] == modelfile.MAX_TRACE
    assert defs["params_common"]["properties"]["chunk_size"]["maximum"] == modelfile.MAX_CHUNK
    settings = defs["settings"]["properties"]
    for name in (
        "spatial_weight",
        "smoothing",
        "max_iter",
        "tol",
        "n_init",
        "sample",
        "seed",
        "beta",
        "m",
        "reg_covar",
    ):
        low, high, _, low_open = modelfile.setting_range(name)
        assert settings[name]["exclusiveMinimum" if low_open else "minimum"] == low, name
        assert settings[name].get("maximum") == high, name
    low, high, _, _ = modelfile.setting_range("spatial_weight")
    assert defs["features"]["properties"]["spatial_weight"]["maximum"] == high


def test_the_schema_ships_inside_the_package():
    here = Path(segsoft.__file__).parent / modelfile.SCHEMA_NAME
    assert json.loads(here.read_text()) == modelfile.schema()


# ----------------------------------------------------------------------------- bad files


def fitted(r):
    return r["model"]["fitted"]


def set_cov(index, matrix):
    def mutate(r):
        fitted(r)["covariances_"][index] = matrix

    return mutate


BAD = {
    # name: (base kind, mutation, what the message must contain)
    "nan weight": (
        "gmm-full",
        lambda r: fitted(r)["weights_"].__setitem__(0, float("nan")),
        "model.fitted.weights_[0]",
    ),
    "weights sum to 0.9": (
        "gmm-full",
        lambda r: fitted(r).update(weights_=[w * 0.9 for w in fitted(r)["weights_"]]),
        "model.fitted.weights_ must sum to 1",
    ),
    "negative weight": ("gmm-full", lambda r: fitted(r).update(weights_=[0.6, 0.6, -0.2]), "model.fitted.weights_[2]"),
    "zero weight": (
        "gmm-full",
        lambda r: fitted(r).update(weights_=[1.0, 0.0, 0.0]),
        "model.fitted.weights_[1] must be above 0",
    ),
    "infinite mean": (
        "gmm-full",
        lambda r: fitted(r)["means_"][1].__setitem__(0, float("inf")),
        "model.fitted.means_[1][0]",
    ),
    "huge mean": ("gmm-full", lambda r: fitted(r)["means_"][1].__setitem__(0, 1e200), "model.fitted.means_[1][0]"),
    "non-symmetric covariance": (
        "gmm-full",
        set_cov(1, [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        "model.fitted.covariances_[1] is not symmetric",
    ),
    "non-PD covariance": (
        "gmm-full",
        set_cov(2, [[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        "model.fitted.covariances_[2] is not positive definite",
    ),
    "NaN in a covariance": (
        "gmm-full",
        set_cov(0, [[float("nan"), 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        "model.fitted.covariances_[0][0][0]",
    ),
    "covariance of the wrong shape": (
        "gmm-full",
        lambda r: fitted(r).update(covariances_=fitted(r)["covariances_"][0]),
        "model.fitted.covariances_",
    ),
    "tied covariance with one per component": (
        "gmm-tied",
        lambda r: fitted(r).update(covariances_=[fitted(r)["covariances_"]] * 3),
        "model.fitted.covariances_",
    ),
    "zero diagonal variance": (
        "gmm-diag",
        lambda r: fitted(r)["covariances_"][0].__setitem__(1, 0.0),
        "model.fitted.covariances_[0][1]",
    ),
    "tiny spherical variance": (
        "gmm-spherical",
        lambda r: fitted(r)["covariances_"].__setitem__(0, 1e-300),
        "model.fitted.covariances_[0]",
    ),
    "precisions that do not match": (
        "gmm-full",
        lambda r: fitted(r)["precisions_cholesky_"][0][0].__setitem__(0, 123.0),
        "model.fitted.precisions_cholesky_[0] does not match",
    ),
    "means of the wrong dimension": (
        "gmm-full",
        lambda r: fitted(r).update(means_=[m + [0.0] for m in fitted(r)["means_"]]),
        "model.fitted.means_[0] must have 3 entries",
    ),
    "fewer means than components": ("gmm-full", lambda r: fitted(r)["means_"].pop(), "model.fitted.means_ must have 3"),
    "k=10000": (
        "gmm-full",
        lambda r: r["model"]["params"].update(n_components=10000),
        "model.params.n_components must be between 1 and 64",
    ),
    "settings k=10000": ("gmm-full", lambda r: r["settings"].update(k=10000), "settings.k must be between 1 and 64"),
    "smoothing -5": (
        "gmm-full",
        lambda r: r["settings"].update(smoothing=-5),
        "settings.smoothing must be between 0 and 100, got -5",
    ),
    "smoothing 1e6": (
        "gmm-full",
        lambda r: r["settings"].update(smoothing=1e6),
        "settings.smoothing must be between 0 and 100",
    ),
    "smoothing with fcm": (
        "fcm",
        lambda r: r["settings"].update(smoothing=1.0),
        "settings.smoothing needs a likelihood model",
    ),
    "spatial weight 1e9": ("gmm-full", lambda r: r["features"].update(spatial_weight=1e9), "features.spatial_weight"),
    "settings tol 1e9": (
        "gmm-full",
        lambda r: r["settings"].update(tol=1e9),
        "settings.tol must be between 0 and 1000",
    ),
    "k range upside down": ("auto", lambda r: r["settings"].update(k_range=[5, 3]), "settings.k_range"),
    "zero scale": ("gmm-full", lambda r: r["features"]["scale"].__setitem__(1, 0.0), "features.scale[1]"),
    "offset too short": ("gmm-full", lambda r: r["features"]["offset"].pop(), "features.offset must have 3 entries"),
    "unknown colour": ("gmm-full", lambda r: r["features"].update(color="cmyk"), "features.color must be one of"),
    "settings colour disagrees": ("gmm-full", lambda r: r["settings"].update(color="rgb"), "settings.color"),
    "settings model disagrees": ("gmm-full", lambda r: r["settings"].update(model="fcm"), "settings.model"),
    "covariance type disagrees": (
        "gmm-full",
        lambda r: r["model"]["params"].update(covariance="diag"),
        "model.fitted.covariances_ must have shape 3x3",
    ),
    "feature names disagree": ("gmm-full", lambda r: r["features"].update(names=["x"]), "features.names"),
    "string standardize": (
        "gmm-full",
        lambda r: r["features"].update(standardize="yes"),
        "features.standardize must be true or false",
    ),
    "negative sample": ("gmm-full", lambda r: r["settings"].update(sample=-1), "settings.sample must be at least 0"),
    "NaN tol": (
        "gmm-full",
        lambda r: r["model"]["params"].update(tol=float("nan")),
        "model.params.tol must be a finite number",
    ),
    "nested 40 deep below the parser's limit": (
        "gmm-full",
        lambda r: r["settings"].update(note=json.loads("[" * 40 + "]" * 40)),
        "nested too deeply",
    ),
    "chunk_size 0": ("gmm-full", lambda r: r["model"]["params"].update(chunk_size=0), "model.params.chunk_size"),
    "chunk_size 1e12": (
        "gmm-full",
        lambda r: r["model"]["params"].update(chunk_size=10**12),
        "model.params.chunk_size",
    ),
    "max_iter 0": (
        "gmm-full",
        lambda r: r["settings"].update(max_iter=0),
        "settings.max_iter must be between 1 and 100000, got 0",
    ),
    "m 1": ("fcm", lambda r: r["model"]["params"].update(m=1.0), "model.params.m must be above 1"),
    "soft k-means with unequal weights": (
        "soft-kmeans",
        lambda r: fitted(r).update(weights_=[0.5, 0.25, 0.25]),
        "model.fitted.weights_",
    ),
    "negative beta": ("soft-kmeans", lambda r: fitted(r).update(beta_=-1.0), "model.fitted.beta_"),
    "huge beta": ("soft-kmeans", lambda r: fitted(r).update(beta_=1e300), "model.fitted.beta_"),
    "fcm with weights": (
        "fcm",
        lambda r: fitted(r).update(weights_=[0.2, 0.3, 0.5]),
        "model.fitted.weights_ is not a fitted attribute",
    ),
    "a method as a fitted name": (
        "gmm-full",
        lambda r: fitted(r).update(predict_proba=1),
        "model.fitted.predict_proba",
    ),
    "unknown parameter": ("gmm-full", lambda r: r["model"]["params"].update(foo=1), "model.params.foo"),
    "long trace": (
        "gmm-full",
        lambda r: fitted(r).update(log_likelihood_trace_=[0.0] * 100_001),
        "model.fitted.log_likelihood_trace_ has 100001",
    ),
    "long result trace": (
        "gmm-full",
        lambda r: r["result"].update(log_likelihood_trace=[0] * 100_001),
        "result.log_likelihood_trace",
    ),
    "result k disagrees": ("gmm-full", lambda r: r["result"].update(k=4), "result.k"),
    "collapsed_ too short": ("gmm-full", lambda r: fitted(r).update(collapsed_=[False]), "model.fitted.collapsed_"),
    # missing fields
    "no model": ("gmm-full", lambda r: r.pop("model"), "model is missing"),
    "no means": ("gmm-full", lambda r: fitted(r).pop("means_"), "model.fitted.means_ is missing"),
    "no weights": ("gmm-full", lambda r: fitted(r).pop("weights_"), "model.fitted.weights_ is missing"),
    "no beta_": ("soft-kmeans", lambda r: fitted(r).pop("beta_"), "model.fitted.beta_ is missing"),
    "no n_components": (
        "gmm-full",
        lambda r: r["model"]["params"].pop("n_components"),
        "model.params.n_components is missing",
    ),
    "no offset": ("gmm-full", lambda r: r["features"].pop("offset"), "features.offset is missing"),
    "no settings": ("gmm-full", lambda r: r.pop("settings"), "settings is missing"),
    # wrong types
    "null model": ("gmm-full", lambda r: r.update(model=None), "model must be an object, got None"),
    "string smoothing": (
        "gmm-full",
        lambda r: r["settings"].update(smoothing="a lot"),
        "settings.smoothing must be a number",
    ),
    "string weights": (
        "gmm-full",
        lambda r: fitted(r).update(weights_="equal"),
        "model.fitted.weights_ must be a list",
    ),
    "string in the means": (
        "gmm-full",
        lambda r: fitted(r)["means_"][0].__setitem__(2, "0.5"),
        "model.fitted.means_[0][2] must be a number",
    ),
    "fractional k": (
        "gmm-full",
        lambda r: r["model"]["params"].update(n_components=2.5),
        "model.params.n_components must be a whole number",
    ),
    "boolean k": ("gmm-full", lambda r: r["settings"].update(k=True), "settings.k"),
    "null weight": (
        "gmm-full",
        lambda r: fitted(r)["weights_"].__setitem__(1, None),
        "model.fitted.weights_[1] must be a number",
    ),
    "string model type": ("gmm-full", lambda r: r["model"].update(type="KMeans"), "model.type must be one of"),
    "list features": ("gmm-full", lambda r: r.update(features=[1, 2]), "features must be an object"),
    "huge integer": ("gmm-full", lambda r: fitted(r)["means_"][0].__setitem__(0, 10**400), "model.fitted.means_[0][0]"),
}


@pytest.fixture(scope="module")
def records(written) -> dict[str, dict]:
    return {name: json.loads(path.read_text()) for name, path in written.items()}


def assert_refused(path: Path, *fragments: str) -> str:
    with pytest.raises(SegsoftError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_model_file_is_refused_naming_the_field(tmp_path, records, case):
    kind, mutate, fragment = BAD[case]
    record = copy.deepcopy(records[kind])
    mutate(record)
    path = tmp_path / "palette.json"
    path.write_text(json.dumps(record))
    assert_refused(path, fragment)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("null", "the top level must be a JSON object"),
        ("[1, 2]", "the top level must be a JSON object"),
        ('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"a": 1' + "0" * 5000 + "}", "a number with too many digits"),
    ],
    ids=["null", "list", "deep", "syntax", "empty", "long-integer"],
)
def test_a_file_that_is_not_a_model_is_refused(tmp_path, text, fragment):
    path = tmp_path / "m.json"
    path.write_text(text)
    assert_refused(path, fragment)


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path, records):
    record = copy.deepcopy(records["gmm-full"])
    record["settings"]["model_file"] = "[" * 1000 + '"{' * 100
    path = tmp_path / "m.json"
    path.write_text(json.dumps(record))
    load_model(path)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path, records):
    # a 12M-entry trace would make a file of more than 24 MB: padding makes one as large, faster
    path = tmp_path / "big.json"
    with open(path, "w") as f:
        f.write(json.dumps(records["gmm-full"]))
        f.write(" " * modelfile.MAX_MODEL_BYTES)
    assert_refused(path, "too large for a model.json", "16 MB")


def test_missing_and_unreadable_files(tmp_path):
    assert_refused(tmp_path / "none.json", "no such file")
    assert_refused(tmp_path, "is a directory")
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    assert_refused(tmp_path / "latin1.json", "not UTF-8")


def test_model_from_dict_refuses_names_that_would_replace_methods(records):
    from segsoft.mixture import model_from_dict

    data = copy.deepcopy(records["gmm-full"]["model"])
    model_from_dict(data)
    for fitted_name in ("predict_proba", "_pass", "bic"):
        bad = copy.deepcopy(data)
        bad["fitted"][fitted_name] = 1
        with pytest.raises(ValueError, match="not a fitted attribute"):
            model_from_dict(bad)
    bad = copy.deepcopy(data)
    bad["params"]["chunk_size"] = 0
    with pytest.raises(ValueError, match="chunk_size"):
        model_from_dict(bad)


# ----------------------------------------------------------------------------- through the command line


@pytest.mark.parametrize("case", ["nan weight", "non-PD covariance", "smoothing 1e6", "deep"])
def test_segsoft_apply_refuses_a_bad_model_before_writing_anything(tmp_path, records, case):
    bad = tmp_path / "bad_model.json"
    if case == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    else:
        kind, mutate, _ = BAD[case]
        record = copy.deepcopy(records[kind])
        mutate(record)
        bad.write_text(json.dumps(record))
    image = tmp_path / "pic.png"
    PILImage.fromarray(picture()).save(image)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "segsoft", "apply", str(bad), str(image), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
