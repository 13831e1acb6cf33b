"""Regenerate kryten_pipeline/data/sample_catalog.jsonl (deterministic): `python scripts/make_sample_catalog.py`.

A realistic small catalog: Unicode titles, titles with &, <, >, quotes and stray spaces, the same video
uploaded twice under two ids, items with no categories or several, missing durations and thumbnails, and
a handful of bad records (under the 5 % reject limit) so the rejects path is exercised by the demo run.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kryten_pipeline" / "data" / "sample_catalog.jsonl"
CATEGORIES = [
    "Music", "Live Concerts", "Anime", "Documentary", "Comedy", "Science & Tech", "Gaming", "Sports",
    "News", "Kids", "Drama", "Horror", "Retro", "Martial Arts", "Art", "Éducation", "日本のアニメ",
]
SUBJECTS = [
    "Black Hawk Down", "The Deep Blue Sea", "Tokyo Drift Night", "Café Society", "Amélie's Garden",
    "Crème Brûlée Masterclass", "Señor Coconut Live", "Björk — Homogenic Tour", "Mötley Crüe Unplugged",
    "東京の夜", "千と千尋の神隠し (fan dub)", "Москва слезам не верит", "Ελληνική Μυθολογία",
    "מסע בזמן", "رحلة إلى القمر", "Cosmos: A Spacetime Odyssey", "Rock & Roll High School",
    "Tom & Jerry <Classic>", "\"Quoted\" Title", "It's Always Sunny", "Under/Over the Bridge",
    "100% Pure Energy", "Dragon Ball Z", "Neon Genesis Evangelion", "Cowboy Bebop", "Planet Earth II",
    "Blue Planet", "The Last Dance", "Minecraft Speedrun", "Super Mario 64 120 Stars", "Chess Openings",
    "Bach — Cello Suite No. 1", "Lo-fi Beats to Study To", "Nature Sounds 🌧️ Rain", "Cooking with Fire 🔥",
]
SUFFIXES = ["", " (1080p)", " — Part 1", " — Part 2", " [Remastered]", " (Director's Cut)", " Ep. 3",
            " – Live at Wembley", " (2001)", " S01E02", " — Full Episode", " HD"]


def token(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(9))


def main() -> None:
    rng = random.Random(20251218)
    records: list[dict] = []
    for index in range(300):
        title = rng.choice(SUBJECTS) + rng.choice(SUFFIXES)
        if index % 37 == 0:
            title = f"  {title}  "  # stray spaces, trimmed by validation
        n_categories = rng.choices([0, 1, 2, 3, 4], weights=[12, 45, 25, 12, 6])[0]
        record = {
            "video_id": token(rng),
            "title": title,
            "categories": rng.sample(CATEGORIES, n_categories),
            "duration_seconds": None if rng.random() < 0.08 else rng.randint(30, 3 * 3600),
            "thumbnail_url": None if rng.random() < 0.1 else f"https://media.example.org/media/original/thumbnails/user/{token(rng).lower()}.jpg",
        }
        if n_categories == 0 and rng.random() < 0.5:
            del record["categories"]  # missing categories → []
        records.append(record)
    # The same file uploaded twice under two tokens: a duplicate title, two distinct items.
    for original in rng.sample(records, 8):
        copy = dict(original, video_id=token(rng))
        records.insert(rng.randrange(len(records)), copy)
    # A few bad records (each rejected with a reason; the run still succeeds).
    bad = [
        dict(records[5]),  # duplicate video_id
        {"video_id": "../etc/passwd", "title": "path traversal id", "categories": []},
        {"video_id": token(rng), "title": "   ", "categories": ["Music"]},
        {"video_id": token(rng), "title": "Negative duration", "categories": [], "duration_seconds": -5},
        {"video_id": token(rng), "title": "Relative thumbnail", "thumbnail_url": "/media/thumb.jpg"},
    ]
    for record in bad:
        records.insert(rng.randrange(len(records)), record)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(len(lines) // 2, '{"video_id": "truncatedRec", "title": "cut off mid-wri')  # malformed line
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} records to {OUT}")


if __name__ == "__main__":
    main()
