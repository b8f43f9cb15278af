"""Catalogue items: the metadata that sits beside the vectors, persisted as items.json.

items.json is the commit point of an item's existence: an item is visible once it is listed
there, and the write order (vectors before items.json on add, items.json before vectors on
delete) keeps every listed item present in all three stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from flashfit_server.atomic import read_json, write_json_atomic

FORMAT_VERSION = 1


@dataclass
class Item:
    id: int
    name: str
    category: str | None = None
    color: str | None = None
    tags: list[str] = field(default_factory=list)
    user_id: str | None = None
    caption: str = ""
    image_file: str = ""
    created_at: str = ""

    def to_api(self) -> dict:
        data = asdict(self)
        data.pop("image_file")
        data["image_url"] = f"/api/items/{self.id}/image"
        return data


@dataclass
class Catalog:
    items: dict[int, Item] = field(default_factory=dict)
    next_id: int = 1

    def ids_for_user(self, user_id: str) -> list[int]:
        return [item.id for item in self.items.values() if item.user_id == user_id]

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "next_id": self.next_id,
            "items": [asdict(item) for item in sorted(self.items.values(), key=lambda i: i.id)],
        }

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        items = {int(raw["id"]): Item(**raw) for raw in data.get("items", [])}
        return cls(items=items, next_id=int(data.get("next_id", max(items, default=0) + 1)))

    @classmethod
    def load(cls, path: Path) -> Catalog:
        return cls.from_json(read_json(path)) if path.exists() else cls()

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())
