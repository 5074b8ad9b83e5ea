from __future__ import annotations

import json
from pathlib import Path

import pytest

from citeline.connectors.catalog import CatalogConnector, CatalogFormat
from citeline.contracts.connector import Checkpoint, Failure, Upsert
from citeline.domain import Access, ContentType
from citeline.errors import ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync

pytestmark = pytest.mark.unit

STAFF = Access(groups=("staff",))
HEADER = "sku,name,description,category,price,access,link"
CSV_ROWS = [
    "R-100,Rover,A small rover.,robots,499,public,",
    'R-200,Arm,"An arm, with six axes.",robots,1299,partners;user:dana,https://shop.example/arm',
    "R-300,Gripper,Soft gripper.,parts,89,,",
    "",
    "R-400,Battery,,parts,49,public;partners,",
    "R-500,,No name here.,parts,1,public,",
    "R-600,Charger,Fast charger.,parts,29,bad group,",
    "R-700,Cable,USB cable.,parts,5,public,",
]
CONFIG = {
    "id_column": "sku",
    "title_column": "name",
    "text_columns": ["description", "category", "price"],
    "access_column": "access",
    "url_column": "link",
    "base_url": "https://shop.acme.example/p/",
    "metadata_columns": ["category"],
}


def write_csv(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "catalog.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def make(path: Path, default: Access = STAFF, **overrides: object) -> CatalogConnector:
    return CatalogConnector(CatalogConnector.Config(path=path, **{**CONFIG, **overrides}), default)


def docs(connector: CatalogConnector) -> dict:
    return {c.document.external_id: c.document for c in connector.sync(None) if isinstance(c, Upsert)}


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return write_csv(tmp_path, CSV_ROWS)


class TestCatalogCsvContract(ConnectorContract):
    @pytest.fixture
    def connector(self, catalog: Path) -> CatalogConnector:
        return make(catalog, checkpoint_every=2)


class TestCatalogJsonlContract(ConnectorContract):
    @pytest.fixture
    def connector(self, tmp_path: Path) -> CatalogConnector:
        rows = [
            {"sku": 1, "name": "Rover", "description": "Small.", "access": "public"},
            {"sku": 2, "name": "Arm", "description": "Six axes.", "access": ["partners", "user:dana"]},
            {"sku": 3, "name": "Gripper", "access": {"groups": ["parts-team"]}},
            {"sku": 4, "name": "Battery"},
            {"sku": 5, "name": "", "access": "public"},
            {"sku": 6, "name": "Charger", "description": {"nested": True}},
        ]
        path = tmp_path / "products.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return make(path, checkpoint_every=2, text_columns=["description"], url_column=None, metadata_columns=[])


def test_csv_documents(catalog: Path) -> None:
    found = docs(make(catalog))
    rover = found["R-100"]
    assert rover.title == "Rover"
    assert rover.text == "Rover\nDescription: A small rover.\nCategory: robots\nPrice: 499"
    assert rover.content_type is ContentType.RECORD
    assert rover.url == "https://shop.acme.example/p/R-100"
    assert rover.metadata == {"category": "robots"}
    assert found["R-200"].text == "Arm\nDescription: An arm, with six axes.\nCategory: robots\nPrice: 1299"
    assert found["R-200"].url == "https://shop.example/arm"
    assert found["R-400"].text == "Battery\nCategory: parts\nPrice: 49"  # empty cells are left out


def test_csv_access_column(catalog: Path) -> None:
    found = docs(make(catalog))
    assert found["R-100"].access == Access.everyone()
    assert found["R-200"].access == Access(users=("dana",), groups=("partners",))
    assert found["R-300"].access == STAFF  # empty cell: the source default
    assert found["R-400"].access == Access(groups=("partners",), public=True)
    assert docs(make(catalog, Access.private()))["R-300"].access == Access.private()
    assert docs(make(catalog, access_column=None))["R-100"].access == STAFF


def test_csv_bad_rows_are_failures_and_the_rest_goes_on(catalog: Path) -> None:
    changes = run_sync(make(catalog))
    fails = {c.external_id: c.reason for c in changes if isinstance(c, Failure)}
    assert set(fails) == {"R-500", "R-600"}
    assert "row 5" in fails["R-500"] and "has no 'name'" in fails["R-500"]
    assert "row 6" in fails["R-600"] and "invalid group name" in fails["R-600"]
    assert item_ids(changes) == ["R-100", "R-200", "R-300", "R-400", "R-500", "R-600", "R-700"]


def test_csv_row_with_wrong_cell_count(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path, ["A,Alpha,x,c,1,public,", "B,Beta,too,many,cells,here,public,x", "C,Gamma,x,c,1,public,"]
    )
    changes = run_sync(make(path))
    assert item_ids(changes) == ["A", "row:2", "C"]
    assert "row 2 (line 3) has 8 cells but the header has 7" in changes[1].reason
    with pytest.raises(ConnectorError, match="row 2"):
        make(path).list_ids()


def test_csv_quoted_newlines_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text('sku;name;description\nA;Alpha;"two\nlines"\nB;Beta;plain\n', encoding="utf-8")
    connector = CatalogConnector(
        {"path": path, "id_column": "sku", "title_column": "name", "text_columns": ["description"], "delimiter": ";"},
        None,
    )
    found = docs(connector)
    assert found["A"].text == "Alpha\nDescription: two\nlines"
    assert found["A"].access == Access.private()
    assert item_ids(run_sync(connector, {"row": 1})) == ["B"]


def test_jsonl_catalog(tmp_path: Path) -> None:
    path = tmp_path / "products.ndjson"
    lines = [
        json.dumps({"sku": 1, "name": "Rover", "price": 499.5, "tags": ["a", "b"], "access": {"public": True}}),
        "",
        "oops",
        json.dumps({"sku": "R-2", "name": "Arm", "price": None, "access": []}),
    ]
    path.write_text("\n".join(lines) + "\n")
    connector = make(path, text_columns=["price", "tags"], url_column=None, metadata_columns=["tags"])
    changes = run_sync(connector)
    assert item_ids(changes) == ["1", "row:3", "R-2"]
    assert "line 3 is not valid JSON" in changes[1].reason
    found = docs(connector)
    assert found["1"].text == "Rover\nPrice: 499.5\nTags: a, b"
    assert found["1"].access == Access(public=True)  # an access object replaces the default whole
    assert found["1"].metadata == {"tags": "a, b"}
    assert found["R-2"].access == STAFF
    assert [c.cursor for c in changes if isinstance(c, Checkpoint)] == [{}]
    assert item_ids(run_sync(connector, {"row": 3})) == ["R-2"]


def test_format_from_config_or_suffix(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_text(json.dumps({"sku": "A", "name": "Alpha"}) + "\n")
    with pytest.raises(ValueError, match="set format"):
        CatalogConnector.Config(path=path, id_column="sku", title_column="name")
    connector = CatalogConnector({"path": path, "format": "jsonl", "id_column": "sku", "title_column": "name"}, None)
    assert connector.config.file_format is CatalogFormat.JSONL
    assert item_ids(run_sync(connector)) == ["A"]


@pytest.mark.parametrize(
    ("override", "key", "column"),
    [
        ({"id_column": "id"}, "id_column", "id"),
        ({"title_column": "title"}, "title_column", "title"),
        ({"text_columns": ["description", "colour"]}, "text_columns", "colour"),
        ({"access_column": "acl"}, "access_column", "acl"),
        ({"url_column": "href"}, "url_column", "href"),
        ({"metadata_columns": ["brand"]}, "metadata_columns", "brand"),
    ],
)
def test_unknown_column_is_refused(catalog: Path, override: dict, key: str, column: str) -> None:
    connector = make(catalog, **override)
    message = (
        f"config.{key} names column '{column}'.*its columns are: access, category, description, link, name, price, sku"
    )
    with pytest.raises(ConnectorError, match=message):
        connector.validate()
    with pytest.raises(ConnectorError, match=message):
        run_sync(connector)


def test_jsonl_unknown_column_lists_the_keys_seen(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"sku": 1, "name": "A"}) + "\n" + json.dumps({"sku": 2, "name": "B", "extra": 1}) + "\n")
    with pytest.raises(ConnectorError, match=r"names column 'price'.*extra, name, sku"):
        make(path, text_columns=["price"], access_column=None, url_column=None, metadata_columns=[]).validate()


def test_list_ids_refuses_a_partial_listing(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["A,Alpha,,,,,", ",Nameless id,,,,,", "C,Gamma,,,,,"])
    with pytest.raises(ConnectorError, match="row 2 has no 'sku'"):
        make(path).list_ids()
    assert item_ids(run_sync(make(path))) == ["A", "row:2", "C"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"sku": "A", "name": "x"}\n[1, 2]\n')
    with pytest.raises(ConnectorError, match="line 2 is a JSON list"):
        make(jsonl, text_columns=[], access_column=None, url_column=None, metadata_columns=[]).list_ids()


def test_whole_file_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="does not exist"):
        make(tmp_path / "missing.csv").validate()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ConnectorError, match="has no columns"):
        make(empty).validate()
    dupes = write_csv(tmp_path, ["A,B,C"], header="sku,name,name", name="dupes.csv")
    with pytest.raises(ConnectorError, match=r"repeats the columns \['name'\]"):
        make(dupes, text_columns=[], access_column=None, url_column=None, metadata_columns=[]).validate()
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"sku,name\nA,Caf\xe9\n")
    connector = make(latin, text_columns=[], access_column=None, url_column=None, metadata_columns=[])
    with pytest.raises(ConnectorError, match="UTF-8"):
        run_sync(connector)


def test_acme_example_catalog_parses() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "acme" / "catalog.csv"
    connector = make(path, Access.private(), url_column=None, metadata_columns=[])
    changes = run_sync(connector)
    assert not [c for c in changes if isinstance(c, Failure)]
    found = {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}
    assert len(found) == len(connector.list_ids()) >= 10
    assert sorted(i for i, doc in found.items() if not doc.access.public) == ["PRT-KIT", "PRT-TRN"]
