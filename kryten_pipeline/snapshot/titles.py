"""Search-friendly forms of titles. ``catalog_item.title`` itself is always stored unchanged."""

from __future__ import annotations

import re

_MEDIA_EXTENSION = re.compile(
    r"\.(?:mp4|mkv|avi|mov|webm|m4v|flv|wmv|mpe?g|ts|m2ts|vob|ogv|3gp|mp3|m4a|flac|ogg|opus|wav)$", re.I
)
_SEPARATORS = re.compile(r"[._+\[\](){}]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_TOKEN = re.compile(r"[^\W_]+")
# Only these can make the readable form differ from what the tokenizer already sees: a cheap first test,
# since the builder calls this for every title.
_MAYBE_DIFFERENT = re.compile(r"[a-z][A-Z]|_|\.[A-Za-z0-9]{2,4}$")


def readable_title(title: str) -> str:
    """The words of a title that is a file name (``Black.Hawk.Down.[2001].mp4`` → ``Black Hawk Down 2001``).

    FTS5's tokenizer already splits on punctuation; this adds what it cannot see (camelCase joins, a media
    file extension). Returns ``""`` when the words are the same, so ordinary titles are not indexed twice.
    """
    if not _MAYBE_DIFFERENT.search(title):
        return ""
    text = _MEDIA_EXTENSION.sub("", title)
    text = _SEPARATORS.sub(" ", text)
    text = _CAMEL.sub(" ", text)
    text = " ".join(text.split())
    same = _TOKEN.findall(text.lower()) == _TOKEN.findall(title.lower())
    return "" if same else text
