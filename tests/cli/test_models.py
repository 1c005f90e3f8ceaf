"""hexpress models: the registered models and encoders, with where their weights come from."""

import json

from hexpress.cli import app


def test_models_lists_models_and_weights(runner):
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    rows = {r["name"]: r for r in data["models"]}
    assert rows["pixnet"]["kind"] == "dense" and rows["pixnet"]["pretrained_available"]
    enc = {r["name"]: r for r in data["encoders"]}
    assert enc["tf_efficientnet_lite0"]["pretrained_available"] is True
    assert enc["resnet18"]["pretrained_available"] is False
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0 and "pixnet" in table.output and "yes" in table.output
    assert "test_pixnet" not in table.output  # the test suite's tiny models: only with --all
    table = runner.invoke(app, ["models", "--all"])
    assert table.exit_code == 0 and "test_pixnet" in table.output
