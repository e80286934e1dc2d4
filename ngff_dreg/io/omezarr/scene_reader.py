"""Open any RFC-5 scene (or 0.6 image) as a :class:`~ngff_dreg.ngff.scene_graph.SceneGraph`.

The graph holds the scene's own coordinate systems, those of every image
its transforms reference (``input``/``output`` with a ``path``), the
scene's transforms, and each referenced image's ``multiscales >
coordinateTransformations`` (from its intrinsic system to others). An image
of NGFF 0.4/0.5 has one system, ``"physical"``. Parameter arrays and field
groups are read from the store on demand, through paths checked to stay
inside it (:class:`~ngff_dreg.errors.PathEscapeError` otherwise).

Examples
--------
>>> graph = open_scene_graph("out.zarr")  # doctest: +SKIP
>>> t = graph.path(graph.resolve("view/fixed/physical"), graph.resolve("moving"))  # doctest: +SKIP
>>> t([[10.0, 20.0, 30.0]])  # doctest: +SKIP

"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ngff_dreg.errors import InvalidMetadataError, StoreAccessError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import redact_url
from ngff_dreg.ngff._checks import check_relative_path
from ngff_dreg.ngff.scene_axes import (
    ITK_NAMES,
    AxisMismatchError,
    spatial_map,
    spatial_names,
    spatial_unit,
)
from ngff_dreg.ngff.scene_graph import (
    Chain,
    Edge,
    PointMap,
    SceneGraph,
    SystemKey,
    parse_transform,
    reference,
)
from ngff_dreg.ngff.scene_grid import first_field_grid
from ngff_dreg.ngff.transforms import reverse_axes
from ngff_dreg.ngff.upgrade import PHYSICAL_SYSTEM

__all__ = ["SceneMap", "ZarrArraySource", "open_scene_graph", "parse_scene_reference",
           "scene_transform"]

logger = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass
class ZarrArraySource:
    """Arrays and group attributes below ``prefix`` of an open Zarr group."""

    root: Any
    prefix: str = ""
    url: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def _node(self, path: str, key: str) -> Any:
        rel = check_relative_path(path, _join(self.url, self.prefix), key)
        full = _join(self.prefix, rel)
        if full not in self._cache:
            try:
                self._cache[full] = self.root[full] if full else self.root
            except KeyError as exc:
                raise InvalidMetadataError(
                    f"{_join(self.url, self.prefix)}: {key} {path!r} is not in the store"
                ) from exc
        return self._cache[full]

    def array(self, path: str) -> Any:
        """The Zarr array at ``path`` (opened, not read)."""
        return self._node(path, "path")

    def attributes(self, path: str) -> Mapping[str, Any]:
        """The attributes of the group at ``path``."""
        return dict(self._node(path, "path").attrs.asdict())


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs


def _image_systems(graph: SceneGraph, root: Any, url: str, path: str) -> None:
    """Add an image's coordinate systems and its multiscale transforms to ``graph``."""
    where = _join(url, path)
    try:
        group = root[path] if path else root
    except KeyError as exc:
        raise InvalidMetadataError(f"{url}: the scene references {path!r}, which the store "
                                   "does not hold") from exc
    ome = _ome(dict(group.attrs.asdict()))
    ms_list = ome.get("multiscales")
    if not isinstance(ms_list, list) or not ms_list:
        raise InvalidMetadataError(f"{where}: not a multiscale image (no multiscales)")
    ms = ms_list[0]
    systems = ms.get("coordinateSystems")
    if not systems:  # 0.4 / 0.5: one physical system
        graph.add_system((path, PHYSICAL_SYSTEM), list(ms.get("axes") or []))
        return
    for cs in systems:
        graph.add_system((path, str(cs.get("name"))), list(cs.get("axes") or []))
    arrays = ZarrArraySource(root, path, url)
    for i, ct in enumerate(ms.get("coordinateTransformations") or []):
        k = f"{where}/zarr.json multiscales[0].coordinateTransformations[{i}]"
        src, tgt = (reference(ct.get(e), f"{k}.{e}") for e in ("input", "output"))
        src, tgt = ((_join(path, s[0]), s[1]) for s in (src, tgt))
        graph.add_edge(_edge(graph, src, tgt, ct, arrays, k))


def _edge(graph: SceneGraph, src: SystemKey, tgt: SystemKey, ct: Mapping[str, Any],
          arrays: ZarrArraySource, where: str) -> Edge:
    """A stored transform, parsed with the axis names of the two systems it joins."""
    def names(key: SystemKey) -> list[str] | None:
        axes = graph.systems.get(key) or []
        return [str(a.get("name")) for a in axes] if axes else None

    t = parse_transform(ct, arrays, where=where, ndim=graph.ndim(src),
                        input_axes=names(src), output_axes=names(tgt))
    return Edge(src, tgt, t, where)


def open_scene_graph(url: str, storage_options: Mapping[str, Any] | None = None
                     ) -> SceneGraph:
    """The coordinate systems and transforms of the scene (or image) at ``url``.

    Parameters
    ----------
    url:
        A group holding ``ome.scene`` (RFC-5 scene) or ``ome.multiscales``
        (an image, whose own systems and transforms are read).
    storage_options:
        fsspec options (never logged).

    Raises
    ------
    StoreAccessError
        The group cannot be opened.
    InvalidMetadataError
        The group holds neither, or a transform is malformed (the message
        names the file and key).

    """
    safe = redact_url(url)
    try:
        root = zarr_group(url, storage_options, mode="r")
    except FileNotFoundError as exc:
        raise StoreAccessError(f"{safe}: no Zarr group there") from exc
    except Exception as exc:
        raise StoreAccessError(f"cannot open {safe}: {exc}") from exc
    ome = _ome(dict(root.attrs.asdict()))
    graph = SceneGraph(where=safe)
    scene = ome.get("scene")
    if not isinstance(scene, Mapping):
        if "multiscales" in ome:
            _image_systems(graph, root, safe, "")
            return graph
        raise InvalidMetadataError(f"{safe}/zarr.json: neither ome.scene nor ome.multiscales")
    for cs in scene.get("coordinateSystems") or []:
        if not isinstance(cs, Mapping) or "name" not in cs:
            raise InvalidMetadataError(f"{safe}/zarr.json: ome.scene.coordinateSystems: "
                                       f"a system without a name: {cs!r}")
        graph.add_system(("", str(cs["name"])), list(cs.get("axes") or []))
    transforms = scene.get("coordinateTransformations") or []
    refs = []
    for i, ct in enumerate(transforms):
        k = f"{safe}/zarr.json ome.scene.coordinateTransformations[{i}]"
        if not isinstance(ct, Mapping):
            raise InvalidMetadataError(f"{k}: not an object")
        pair = tuple(reference(ct.get(e), f"{k}.{e}") for e in ("input", "output"))
        for p, _ in pair:
            if p:
                check_relative_path(p, safe, f"{k} input/output path")
        refs.append((k, ct, pair))
    for path in sorted({p for _, _, pair in refs for p, _ in pair if p}):
        _image_systems(graph, root, safe, path)
    arrays = ZarrArraySource(root, "", safe)
    for k, ct, (src, tgt) in refs:
        for key in (src, tgt):
            if key not in graph.systems:
                raise InvalidMetadataError(f"{k}: coordinate system {key[1]!r}"
                                           f"{' of ' + key[0] if key[0] else ''} is not "
                                           "declared")
        graph.add_edge(_edge(graph, src, tgt, ct, arrays, k))
    return graph


def scene_transform(url: str, source: str, target: str,
                    storage_options: Mapping[str, Any] | None = None) -> Any:
    """The :class:`~ngff_dreg.ngff.scene_graph.PointMap` from system ``source`` to ``target``."""
    graph = open_scene_graph(url, storage_options)
    return graph.path(graph.resolve(source), graph.resolve(target))


def parse_scene_reference(text: str) -> tuple[str, str, str] | None:
    """``(scene, source, target)`` of ``SCENE:SOURCE:TARGET``; ``None`` for a plain URL.

    ``s3://bucket/x.zarr`` is a plain URL (its only ``:`` is the scheme's).
    """
    parts = str(text).rsplit(":", 2)
    if len(parts) != 3 or not all(parts) or len(parts[0]) == 1:  # (a drive letter)
        return None
    if any(p.startswith("//") for p in parts[1:]):  # a URL scheme, not names
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class SceneMap:
    """The map between two systems of a scene, on ngff-dreg's points (ITK order x, y, z).

    Holds only the scene URL, the two names and the points' axis names, so it
    pickles small; the graph is opened on first use in each process.
    ``transform_points`` makes it usable wherever ngff-dreg maps points
    (``apply``, ``transform-points``, ``export``). A point's coordinates go to
    the source system's spatial axes of the same names, whatever their order
    there; its other axes (time, channel) are set to 0
    (:func:`~ngff_dreg.ngff.scene_axes.spatial_map`).

    Parameters
    ----------
    url, source, target:
        The scene and the two systems (names as ``ngff-dreg info`` lists them).
    storage_options:
        fsspec options (never logged).
    axes:
        Names of the points' coordinates, ITK order; default ``x, y(, z)``
        for as many spatial axes as ``source`` has.
    target_axes:
        Names of the mapped points' coordinates (default ``axes``).

    """

    url: str
    source: str
    target: str
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    axes: tuple[str, ...] | None = None
    target_axes: tuple[str, ...] | None = None

    def _graph(self) -> tuple[SceneGraph, SystemKey, SystemKey]:
        graph = open_scene_graph(self.url, self.storage_options)
        return graph, graph.resolve(self.source), graph.resolve(self.target)

    def _names(self, graph: SceneGraph, source: SystemKey) -> tuple[str, ...]:
        if self.axes is not None:
            return tuple(self.axes)
        n = len(spatial_names(graph, source))
        if n not in ITK_NAMES:
            raise AxisMismatchError(f"{graph.where}: coordinate system {self.source!r} has "
                                    f"{n} spatial axes; ngff-dreg maps 2D or 3D points")
        return ITK_NAMES[n]

    def _map(self) -> PointMap:
        """The map on NumPy-order points (the ITK-order names reversed, e.g. ``z, y, x``)."""
        cached = _MAPS.get(self)
        if cached is None:
            graph, src, tgt = self._graph()
            names = self._names(graph, src)
            out = names if self.target_axes is None else tuple(self.target_axes)
            cached = spatial_map(graph, src, tgt, names[::-1], out[::-1])
            _MAPS[self] = cached
        return cached

    @property
    def ndim(self) -> int:
        """Number of coordinates of a point."""
        return _input_count(self._map())

    def check(self) -> SceneMap:
        """Open the scene and find the path now (errors before any work starts)."""
        self._map()
        return self

    def inverse(self) -> SceneMap:
        """The map from ``target`` to ``source``."""
        return SceneMap(self.url, self.target, self.source, self.storage_options,
                        self.target_axes, self.axes)

    def homogeneous(self) -> Any:
        """The ``(n+1, n+1)`` ITK-order matrix of a linear map, ``None`` otherwise."""
        h = self._map().homogeneous()
        return None if h is None else reverse_axes(h)

    def default_grid(self) -> ImageGeometry | None:
        """The grid of the first field along the map, in the source's points, or ``None``.

        See :func:`~ngff_dreg.ngff.scene_grid.first_field_grid`; the unit is the
        source system's.
        """
        graph, src, _ = self._graph()
        return first_field_grid(self._map(), spatial_unit(graph, src))

    def transform_points(self, points: Any) -> Any:
        """Map ``(n, ndim)`` ITK-order (x, y, z) physical points."""
        import numpy as np

        pts = np.asarray(points, dtype=np.float64)
        m = self._map()
        if pts.ndim != 2 or pts.shape[1] != _input_count(m):
            raise AxisMismatchError(
                f"{redact_url(self.url)}: points of shape {pts.shape} for coordinate system "
                f"{self.source!r}, whose spatial axes take {_input_count(m)} coordinates")
        return np.asarray(m(pts[:, ::-1]))[:, ::-1]


def _input_count(m: PointMap) -> int:
    """Coordinates the adapted map takes (its first step is the axis embedding)."""
    first = m.parts[0] if isinstance(m, Chain) else m
    h = first.homogeneous()
    return 0 if h is None else int(h.shape[1]) - 1


_MAPS: dict[SceneMap, Any] = {}
