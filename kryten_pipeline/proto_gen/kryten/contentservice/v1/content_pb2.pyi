from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntityKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTITY_KIND_UNSPECIFIED: _ClassVar[EntityKind]
    ENTITY_KIND_SERIES: _ClassVar[EntityKind]
    ENTITY_KIND_SEASON: _ClassVar[EntityKind]
    ENTITY_KIND_EPISODE: _ClassVar[EntityKind]
    ENTITY_KIND_MEDIA_ASSET: _ClassVar[EntityKind]
ENTITY_KIND_UNSPECIFIED: EntityKind
ENTITY_KIND_SERIES: EntityKind
ENTITY_KIND_SEASON: EntityKind
ENTITY_KIND_EPISODE: EntityKind
ENTITY_KIND_MEDIA_ASSET: EntityKind

class CatalogSnapshotRequest(_message.Message):
    __slots__ = ("cursor", "limit")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    limit: int
    def __init__(self, cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CatalogSnapshotChunk(_message.Message):
    __slots__ = ("items", "next_cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogFeedItem]
    next_cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogFeedItem, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class CatalogFeedItem(_message.Message):
    __slots__ = ("id", "kind", "title", "series_id", "series_title", "season_id", "season_number", "season_title", "episode_number", "episode_id", "categories", "duration_seconds", "thumbnail_url", "status", "playback")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    SERIES_TITLE_FIELD_NUMBER: _ClassVar[int]
    SEASON_ID_FIELD_NUMBER: _ClassVar[int]
    SEASON_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SEASON_TITLE_FIELD_NUMBER: _ClassVar[int]
    EPISODE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: EntityKind
    title: str
    series_id: str
    series_title: str
    season_id: str
    season_number: int
    season_title: str
    episode_number: int
    episode_id: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    duration_seconds: int
    thumbnail_url: str
    status: str
    playback: Playback
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[EntityKind, str]] = ..., title: _Optional[str] = ..., series_id: _Optional[str] = ..., series_title: _Optional[str] = ..., season_id: _Optional[str] = ..., season_number: _Optional[int] = ..., season_title: _Optional[str] = ..., episode_number: _Optional[int] = ..., episode_id: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., duration_seconds: _Optional[int] = ..., thumbnail_url: _Optional[str] = ..., status: _Optional[str] = ..., playback: _Optional[_Union[Playback, _Mapping]] = ...) -> None: ...

class Playback(_message.Message):
    __slots__ = ("manifest_url", "variants")
    MANIFEST_URL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    manifest_url: str
    variants: _containers.RepeatedCompositeFieldContainer[PlaybackVariant]
    def __init__(self, manifest_url: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[PlaybackVariant, _Mapping]]] = ...) -> None: ...

class PlaybackVariant(_message.Message):
    __slots__ = ("label", "bitrate")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BITRATE_FIELD_NUMBER: _ClassVar[int]
    label: str
    bitrate: int
    def __init__(self, label: _Optional[str] = ..., bitrate: _Optional[int] = ...) -> None: ...
