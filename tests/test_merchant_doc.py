"""The merchant API's OpenAPI document (docs/merchant-api.json) says what the code serves: every
route and no other, and request schemas equal to the ones the switch validates with."""

import json
from pathlib import Path

import msgspec

from switch.merchant.api import CreateOrder, MerchantApi, RefundOrder, Signed
from switch.merchant.settings import MerchantApiSection

DOC = json.loads((Path(__file__).parent.parent / "docs" / "merchant-api.json").read_text())


def test_every_route_served_is_documented_and_no_other():
    app = MerchantApi(MerchantApiSection(), [], {}, _Orders(), None).app()
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, ops in DOC["paths"].items() for method in ops}
    assert served == documented


def test_the_request_schemas_are_the_ones_the_switch_validates_with():
    ref = "#/components/schemas/{name}"
    _, components = msgspec.json.schema_components([CreateOrder, Signed, RefundOrder], ref_template=ref)
    for name, schema in components.items():
        assert DOC["components"]["schemas"][name] == schema, name


class _Orders:
    pool = None
