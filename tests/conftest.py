"""Shared fixtures: a local moto S3 server and a synthetic OME-Zarr image writer.

Fixtures
--------
``s3_server`` (session)
    A :class:`S3Server`: ``endpoint_url``, ``create_bucket()``,
    ``storage_options(anon=...)``, ``url(bucket, key)``, ``iam_auth()`` (context
    manager enforcing IAM signatures and yielding valid credentials), ``client()``.
``make_test_image``
    ``make_test_image(url, shape=..., version=..., ...) -> (array, geometry)``:
    writes a smooth random image with :func:`ngff_dreg.io.omezarr.image_writer.write_multiscale`.
``synthetic_array``
    ``synthetic_array(shape, seed=0, dtype=float32) -> np.ndarray``.
``store_writes``
    A ``collections.Counter`` of every object written to a local or fsspec
    (S3) zarr store in this process during the test, keyed ``"<root>/<key>"``.
``ngff_config``
    ``ngff_config({"io.read-attempts": 2, ...})``: ngff-dreg settings
    (:mod:`ngff_dreg.config`, keys below ``ngff-dreg``) set with
    ``dask.config.set`` until the test ends. A run's client applies them on
    its workers; at the end of the test the session cluster's workers get
    the restored values back.
``read_faults``
    A :class:`ReadFaults`: ``fail(path, times=None, error=...)`` makes reads of
    a local store object fail in this process (every read, or the first
    ``times``); ``hits`` counts the injected failures by path.
``hand_scene``, ``ngff_zarr_scene``
    Write an RFC-5 scene ``fixed -> moving`` holding a displacement field (by
    hand, with axes in any order and an optional time/channel axis; or with
    ngff-zarr's ITK conversion and scene writer) and return a :class:`SceneCase`
    with ITK's transform for the same map.
``bigwarp_map``
    ``bigwarp_map(container, points)``: a BigWarp displacement-field container
    read and applied as BigWarp's Java reader does (transcribed from its source).
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """Handle on a local moto S3 server."""

    endpoint_url: str
    region: str = "us-east-1"
    _buckets: list[str] = field(default_factory=list)

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for the server (dummy credentials unless given)."""
        import boto3

        kwargs.setdefault("aws_access_key_id", "testing")
        kwargs.setdefault("aws_secret_access_key", "testing")
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, **kwargs
        )

    def create_bucket(self, name: str | None = None, *, public: bool = False) -> str:
        """Create a bucket (unique name by default); ``public`` adds a public-read policy."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if public:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "PublicRead",
                    "Effect": "Allow",
                    "Principal": "*",
                    # moto checks HEAD as "s3:HeadObject" (AWS folds it into GetObject)
                    "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                }],
            }
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        self._buckets.append(name)
        return name

    def url(self, bucket: str, key: str = "") -> str:
        """``s3://bucket/key``."""
        return f"s3://{bucket}/{key.lstrip('/')}" if key else f"s3://{bucket}"

    def storage_options(
        self,
        *,
        anon: bool = False,
        key: str = "testing",
        secret: str = "testing",
        max_attempts: int = 2,
    ) -> dict[str, Any]:
        """fsspec/s3fs options pointing at this server."""
        opts: dict[str, Any] = {
            "anon": anon,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
            "config_kwargs": {"retries": {"max_attempts": max_attempts}},
            "use_listings_cache": False,
        }
        if not anon:
            opts["key"] = key
            opts["secret"] = secret
        return opts

    def _reset_auth(self, count: str) -> None:
        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth", data=count.encode(), method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    @contextlib.contextmanager
    def iam_auth(self) -> Iterator[dict[str, str]]:
        """Enforce IAM request signing inside the block.

        Yields ``{"key": ..., "secret": ...}`` of a user allowed ``s3:*``; any
        other credentials (and anonymous requests) are refused meanwhile. Not
        safe for concurrent use of the same server by other tests.
        """
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        user = f"u{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user, PolicyName="s3all",
            PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }),
        )
        ak = iam.create_access_key(UserName=user)["AccessKey"]
        self._reset_auth("0")
        try:
            yield {"key": ak["AccessKeyId"], "secret": ak["SecretAccessKey"]}
        finally:
            self._reset_auth("inf")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session (dummy AWS env inside)."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for k, v in _DUMMY_ENV.items():
            mp.setenv(k, v)
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
        finally:
            server.stop()


def _synthetic(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    """Smooth random volume with structure at several scales (values in [0, 1000])."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.random(shape)
    img = ndimage.gaussian_filter(noise, 2.0) + 0.2 * ndimage.gaussian_filter(noise, 0.7)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-12) * 1000.0
    return img.astype(dtype)


@pytest.fixture
def synthetic_array() -> Callable[..., np.ndarray]:
    """``synthetic_array(shape, seed=0, dtype=np.float32)``."""
    return _synthetic


@pytest.fixture
def make_test_image() -> Callable[..., tuple[np.ndarray, Any]]:
    """Write a synthetic multiscale image; returns ``(level0 array, geometry)``."""
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    def make(
        url: str,
        shape: tuple[int, ...] = (24, 28, 32),
        *,
        version: str = "0.5",
        spacing: tuple[float, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        direction: Any = None,
        unit: str | None = "micrometer",
        chunks: Any = 16,
        n_levels: int | None = 2,
        dtype: Any = np.float32,
        seed: int = 0,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, Any]:
        ndim = len(shape)
        data = _synthetic(tuple(shape), seed, dtype)
        geometry = ImageGeometry(
            shape=tuple(shape),
            spacing=spacing or (1.0,) * ndim,
            origin=origin or (0.0,) * ndim,
            direction=() if direction is None else direction,
            unit=unit,
        )
        write_multiscale(
            url, data, geometry, version=version, chunks=chunks, n_levels=n_levels,
            storage_options=storage_options, **kwargs,
        )
        return data, geometry

    return make


@pytest.fixture
def store_writes(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Count the objects zarr writes (``set`` on LocalStore/FsspecStore), by ``root/key``."""
    import collections
    import threading

    from zarr.storage import FsspecStore, LocalStore

    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    for cls, root in ((LocalStore, lambda st: str(st.root)), (FsspecStore, lambda st: st.path)):
        original = cls.set

        async def counted(self: Any, key: str, value: Any, *args: Any,
                          _orig: Any = original, _root: Any = root, **kwargs: Any) -> None:
            with lock:
                counts[f"{_root(self).rstrip('/')}/{key}"] += 1
            await _orig(self, key, value, *args, **kwargs)

        monkeypatch.setattr(cls, "set", counted)
    return counts


@pytest.fixture
def ngff_config() -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Set ngff-dreg settings (keys below ``ngff-dreg``) in dask's configuration for one test."""
    import dask

    with contextlib.ExitStack() as stack:

        def set_settings(values: Mapping[str, Any]) -> None:
            stack.enter_context(
                dask.config.set({f"ngff-dreg.{k}": v for k, v in values.items()}))

        yield set_settings
    if _SESSION_CLIENTS:  # a run in the test applied the values on the workers: undo
        from ngff_dreg.cluster import share_settings

        for client in _SESSION_CLIENTS:
            share_settings(client)


_SESSION_CLIENTS: list[Any] = []


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A real multi-process dask cluster (2 workers x 1 thread) on 127.0.0.1."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    # Not the default client: code under test must use the client it is given.
    with cluster, Client(cluster, set_as_default=False) as client:
        _SESSION_CLIENTS.append(client)
        try:
            yield client
        finally:
            _SESSION_CLIENTS.remove(client)


def _itk_from_ngff_zarr(item: dict[str, Any], store: str, ndim: int) -> Any:
    """One scene stage converted by ngff-zarr 0.50, as a native ITK transform."""
    import itk
    import ngff_zarr
    from ngff_zarr import ngff_transform_to_itk_transform
    from ngff_zarr.v06.zarr_metadata import Affine, Displacements

    dims = ["z", "y", "x"][-ndim:]
    if item["type"] == "displacements":
        field = ngff_zarr.from_ngff_zarr(f"{store}/{item['path']}")
        t = Displacements(path=item["path"], interpolation=item.get("interpolation"))
        lst = ngff_transform_to_itk_transform(t, dims, fields={item["path"]: field})
    else:
        assert item["type"] == "affine"
        lst = ngff_transform_to_itk_transform(Affine(affine=item["affine"]), dims)
    w = lst[0]
    kind = w.transformType.transformParameterization
    d = {
        "transformType": {
            "transformParameterization": getattr(kind, "value", kind),
            "parametersValueType": "float64",  # transform_from_dict wants float64
            "inputDimension": ndim, "outputDimension": ndim,
        },
        "numberOfFixedParameters": w.numberOfFixedParameters,
        "numberOfParameters": w.numberOfParameters,
        "name": w.name, "inputSpaceName": "", "outputSpaceName": "",
        "fixedParameters": np.asarray(w.fixedParameters, dtype=np.float64),
        "parameters": np.asarray(w.parameters, dtype=np.float64),
    }
    return itk.transform_from_dict([d])


@pytest.fixture
def ngff_zarr_stage_to_itk() -> Callable[[dict[str, Any], str, int], Any]:
    """Convert one RFC-5 stage (``displacements`` or ``affine``) with ngff-zarr into ITK.

    ``f(item, store, ndim)``: ``item["path"]`` is relative to ``store``. This is the
    other implementation that must read our output the way we mean it.
    """
    return _itk_from_ngff_zarr


@dataclass
class ReadFaults:
    """Failures injected into ``LocalStore.get`` of this process, by object path.

    ``fail(path)`` makes every read of the object at ``path`` (a file below a
    local store) raise ``error()`` (an ``EIO`` ``OSError`` by default), or only
    the first ``times`` reads; ``hits`` counts the failures raised, by path.
    """

    rules: dict[str, tuple[int | None, Callable[[], BaseException]]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    #: paths whose faults hit only byte-range reads ``[a:b]`` (a shard's inner chunks)
    ranges_only: set[str] = field(default_factory=set)

    def fail(self, path: Any, times: int | None = None,
             error: Callable[[], BaseException] | None = None, *,
             ranges_only: bool = False) -> None:
        """Fail reads of ``path`` (every one, or the first ``times``; only ranged ones)."""
        import errno
        import os

        def eio() -> BaseException:
            return OSError(errno.EIO, os.strerror(errno.EIO))

        self.rules[os.path.realpath(str(path))] = (times, error or eio)
        if ranges_only:
            self.ranges_only.add(os.path.realpath(str(path)))

    def clear(self) -> None:
        """Remove every fault."""
        self.rules.clear()

    def check(self, path: str, byte_range: Any = None) -> None:
        """Raise the fault planned for ``path``, if any is left."""
        rule = self.rules.get(path)
        if rule is None or (path in self.ranges_only and not hasattr(byte_range, "end")):
            return
        times, error = rule
        n = self.hits.get(path, 0)
        if times is not None and n >= times:
            return
        self.hits[path] = n + 1
        raise error()


@pytest.fixture
def read_faults(monkeypatch: pytest.MonkeyPatch) -> ReadFaults:
    """Inject read failures into local zarr stores of this process (see :class:`ReadFaults`)."""
    import os

    from zarr.storage import LocalStore

    faults = ReadFaults()
    original = LocalStore.get

    async def get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        byte_range = args[1] if len(args) > 1 else kwargs.get("byte_range")
        faults.check(os.path.realpath(str(self.root / key)), byte_range)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", get)
    return faults


# ------------------------------------------------------- scenes written by other tools
@dataclass
class SceneCase:
    """An RFC-5 scene on disk, and ITK's transform for the same map (ITK points x, y, z).

    ``reference`` maps ``source`` to ``target``; ``spacing``/``origin``/``size``
    (ITK order) are the field's grid, where the map is known exactly.
    """

    url: str
    reference: Any
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    size: tuple[int, ...]
    source: str = "fixed"
    target: str = "moving"

    def inside(self, n: int, seed: int = 0, margin: float = 1.0) -> np.ndarray:
        """``n`` ITK-order points inside the field's grid (``margin`` voxels from its edge)."""
        rng = np.random.default_rng(seed)
        idx = rng.uniform(margin, np.asarray(self.size) - 1 - margin, (n, len(self.size)))
        return idx * np.asarray(self.spacing) + np.asarray(self.origin)

    def expected(self, points: np.ndarray) -> np.ndarray:
        """``reference`` applied to ITK-order points."""
        return np.array([self.reference.TransformPoint([float(v) for v in p]) for p in points])

    @property
    def voxel(self) -> np.ndarray:
        """The field's spacing, to express errors in voxels."""
        return np.asarray(self.spacing)


_GRID = {"spacing": (0.9, 0.7, 0.5), "origin": (-3.0, 1.0, 2.5), "size": (14, 12, 10)}


def _smooth_vectors(seed: int, scale: float) -> np.ndarray:
    """A smooth ``[z][y][x][x, y, z]`` field on ``_GRID`` (ITK's layout)."""
    from scipy.ndimage import zoom

    shape_zyx = _GRID["size"][::-1]
    coarse = np.random.default_rng(seed).normal(scale=scale, size=(3, 4, 5, 3))
    return np.stack([zoom(coarse[..., c], np.divide(shape_zyx, coarse.shape[:3]), order=3)
                     for c in range(3)], axis=-1).astype(np.float64)


def _itk_field(vec: np.ndarray) -> Any:
    import itk

    image = itk.image_from_array(np.ascontiguousarray(vec), is_vector=True)
    image.SetSpacing(_GRID["spacing"])
    image.SetOrigin(_GRID["origin"])
    dft = itk.DisplacementFieldTransform[itk.D, 3].New()
    dft.SetDisplacementField(image)
    return dft


_AFFINE_XYZ = (np.array([[0.98, 0.06, -0.03], [-0.05, 1.03, 0.04], [0.02, -0.04, 0.97]]),
               np.array([0.8, -0.6, 0.3]))


def _hand_scene(store: Any, system: str = "xyz", field: str = "xyz",
                leading: str | None = None) -> SceneCase:
    """A scene written by hand (zarr): ``fixed -> moving = [displacements, affine]``.

    ``system``: the order of the systems' spatial axes; ``field``: that of the
    field array's (matched by name); ``leading``: a ``"t"`` (time) or ``"c"``
    (channel) axis first in both systems, passed through by a ``byDimension``.
    """
    import itk
    import zarr

    vec = _smooth_vectors(4, 0.8)  # [z][y][x][dx, dy, dz]
    spacing, origin = _GRID["spacing"], _GRID["origin"]
    arr = np.transpose(vec, ["zyx".index(a) for a in field] + [3])
    arr = np.moveaxis(arr[..., ["xyz".index(a) for a in system]], -1, 0)  # comps: system order
    unit = {"unit": "micrometer"}
    space = [{"name": a, "type": "space", **unit} for a in system]
    lead = {"t": [{"name": "t", "type": "time", "unit": "second"}],
            "c": [{"name": "c", "type": "channel"}], None: []}[leading]
    root = zarr.open_group(str(store), mode="w")
    group = root.create_group("fields").create_group("warp")
    group.create_array("s0", data=arr, chunks=(3, 5, 5, 5))
    field_axes = [{"name": "c", "type": "displacement", "discrete": True},
                  *({"name": a, "type": "space", **unit} for a in field)]
    grid = {"type": "sequence", "input": "s0", "output": "warp", "transformations": [
        {"type": "scale", "scale": [1.0, *(spacing["xyz".index(a)] for a in field)]},
        {"type": "translation", "translation": [0.0, *(origin["xyz".index(a)] for a in field)]}]}
    group.attrs.put({"ome": {"version": "0.6", "multiscales": [{
        "coordinateSystems": [{"name": "warp", "axes": field_axes}],
        "datasets": [{"path": "s0", "coordinateTransformations": [grid]}]}]}})
    m, t = _AFFINE_XYZ
    perm = ["xyz".index(a) for a in system]
    affine = np.hstack([m[np.ix_(perm, perm)], t[perm, None]]).tolist()
    spatial = {"type": "sequence", "transformations": [
        {"type": "displacements", "path": "fields/warp", "interpolation": "linear"},
        {"type": "affine", "affine": affine}]}
    if leading is not None:
        spatial = {"type": "byDimension", "transformations": [
            {"type": "identity", "input_axes": [0], "output_axes": [0]},
            {**spatial, "input_axes": [1, 2, 3], "output_axes": [1, 2, 3]}]}
    root.attrs.put({"ome": {"version": "0.6", "scene": {
        "coordinateSystems": [{"name": n, "axes": [*lead, *space]} for n in ("fixed", "moving")],
        "coordinateTransformations": [{**spatial, "input": {"name": "fixed"},
                                       "output": {"name": "moving"}}]}}})
    aff = itk.AffineTransform[itk.D, 3].New()
    aff.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(m)))
    aff.SetTranslation([float(v) for v in t])
    composite = itk.CompositeTransform[itk.D, 3].New()
    composite.AddTransform(aff)
    composite.AddTransform(_itk_field(vec))  # applied first
    return SceneCase(str(store), composite, spacing, origin, _GRID["size"])


def _ngff_zarr_scene(store: Any, dims: str = "zyx") -> SceneCase:
    """A scene written by ngff-zarr: its ITK field conversion, then its scene writer.

    ``dims`` ``"xyz"`` needs version 0.9.dev1 (ngff-zarr refuses x, y, z in 0.6).
    """
    import ngff_zarr
    from ngff_zarr import NgffScene
    from ngff_zarr.v06.zarr_metadata import Axis, CoordinateSystem, CoordinateSystemIdentifier

    version = "0.6" if dims == "zyx" else "0.9.dev1"
    dft = _itk_field(_smooth_vectors(5, 0.8))
    path = "coordinateTransformations/warp"
    t, field_image = ngff_zarr.itk_displacement_field_to_ngff_transform(dft, list(dims),
                                                                        path=path)
    ngff_zarr.to_ngff_zarr(f"{store}/{path}",
                           ngff_zarr.to_multiscales(field_image, scale_factors=[]),
                           version=version)
    t.input = CoordinateSystemIdentifier(name="fixed")
    t.output = CoordinateSystemIdentifier(name="moving")
    axes = [Axis(name=a, type="space", unit="micrometer") for a in dims]
    scene = NgffScene(images={}, coordinateTransformations=[t], coordinateSystems=[
        CoordinateSystem("fixed", axes), CoordinateSystem("moving", axes)])
    ngff_zarr.to_ome_zarr(str(store), scene, overwrite=False, version=version)
    return SceneCase(str(store), dft, _GRID["spacing"], _GRID["origin"], _GRID["size"])


@pytest.fixture
def hand_scene() -> Callable[..., SceneCase]:
    """``hand_scene(store, system="xyz", field="xyz", leading=None) -> SceneCase``."""
    return _hand_scene


@pytest.fixture
def ngff_zarr_scene() -> Callable[..., SceneCase]:
    """``ngff_zarr_scene(store, dims="zyx") -> SceneCase`` (a field written by ngff-zarr)."""
    return _ngff_zarr_scene


# ---------------------------------------------------- BigWarp's reader, transcribed
def _bigwarp_map(container: Any, points: np.ndarray, dataset: str = "dfield") -> np.ndarray:
    """Map ITK-order points as BigWarp's ``N5DisplacementField.open(n5, dataset, false)``.

    Transcribed from n5-imglib2 (``N5DisplacementField``: ``openField``, ``vectorAxisLast``,
    ``openPixelToPhysical``, ``openCalibratedField`` with ``EXTEND_BORDER`` and
    ``NLinearInterpolatorFactory``, ``open``: the field, then ``affine``) and n5-zarr
    (a C-order ``.zarray`` shape is reported reversed, imglib2's fastest-first order).
    Only what an ngff-dreg export writes: a float field, ``spacing`` and ``offset``.
    """
    from pathlib import Path

    import zarr
    from scipy.ndimage import map_coordinates

    root = Path(container) / dataset
    meta = json.loads((root / ".zarray").read_text())
    attrs = json.loads((root / ".zattrs").read_text())
    assert meta["zarr_format"] == 2 and meta["order"] == "C"
    assert np.dtype(meta["dtype"]).kind == "f"  # integer types would be quantized fields
    data = np.asarray(zarr.open_array(str(root), mode="r")[...], dtype=np.float64)
    img = np.transpose(data)  # imglib2 order: img[p0, p1, ...]
    n = img.ndim
    if img.shape[n - 1] != n - 1:  # vectorAxisLast
        assert img.shape[0] == n - 1, "vector components in neither the first nor last axis"
        img = np.moveaxis(img, 0, -1)
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    pix = (pts - np.asarray(attrs.get("offset", [0.0] * (n - 1)))) / np.asarray(
        attrs.get("spacing", [1.0] * (n - 1)))
    disp = np.stack([map_coordinates(img[..., c], pix.T, order=1, mode="nearest")
                     for c in range(n - 1)], axis=1)
    out = pts + disp
    if "affine" in attrs:
        a = np.asarray(attrs["affine"], dtype=np.float64).reshape(n - 1, n)
        out = out @ a[:, :-1].T + a[:, -1]
    return out


@pytest.fixture
def bigwarp_map() -> Callable[..., np.ndarray]:
    """``bigwarp_map(container, points, dataset="dfield")``: BigWarp's reading, in NumPy."""
    return _bigwarp_map
