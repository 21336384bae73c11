"""The cohort explorer's faces: CLI errors and output, the page's states, charts, the audit section."""

import ast
import json
from pathlib import Path

import altair as alt
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from healthsync.cli import main
from healthsync.cohort import charts, explore
from healthsync.data import load_federation
from tests.app_helpers import ROOT, AppEnv
from tests.cohort_helpers import InProcess
from tests.test_cohort_guards import assert_no_small_counts

PAGE = ROOT / "pages" / "cohort.py"
AUDIT = ROOT / "pages" / "audit.py"


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    env.user("analyst")  # creates analyst-user
    return env


def page(env: AppEnv, role: str, path: Path = PAGE) -> AppTest:
    at = AppTest.from_file(str(path), default_timeout=60)
    return env.log_in(at, role).run()


def ask(env: AppEnv, **query):
    federation = load_federation(env.fed_dir)
    return explore(
        env.fed_dir, db=env.db, user="analyst-user", executor=InProcess(federation), **query
    )


# ---------------------------------------------------------------- CLI
def cli(env: AppEnv, capsys, *args: str) -> tuple[int, str, str]:
    base = ["cohort", "--data", str(env.fed_dir), "--db", str(env.db), *args]
    code = main(base)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "viewer-user"], "error: user 'viewer-user' is a viewer"),
        (["--user", "nobody"], "error: wrong user name or password for 'nobody'"),
        (["--user", "analyst-user", "--where", "height > 2"], "error: unknown column 'height'"),
        (["--user", "analyst-user", "--stat", "max:age"], "error: unknown statistic 'max:age'"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(env, capsys, monkeypatch, args, message):
    env.user("viewer")
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "a-long-password")
    code, out, err = cli(env, capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize("how", ["missing", "wrong-env", "wrong-stdin", "empty-stdin"])
def test_the_cli_refuses_without_the_users_password(env, capsys, monkeypatch, how):
    """``--user`` alone once let anyone spend anyone's budget; now it needs the password."""
    import io

    monkeypatch.delenv("HEALTHSYNC_PASSWORD", raising=False)
    args = ["--user", "analyst-user"]
    if how == "wrong-env":
        monkeypatch.setenv("HEALTHSYNC_PASSWORD", "not-the-password")
    elif how.endswith("stdin"):
        text = "not-the-password\n" if how == "wrong-stdin" else "\n"
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
        args.append("--password-stdin")
    code, out, err = cli(env, capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1
    expected = "wrong user name or password" if how.startswith("wrong") else "password is needed"
    assert expected in err
    assert not (env.fed_dir / "hospitals" / "h0000" / "site").exists()  # no hospital was asked


def test_wrong_cli_passwords_are_throttled_like_the_login_form(env, capsys, monkeypatch):
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "not-the-password")
    for _ in range(5):
        assert cli(env, capsys, "--user", "analyst-user")[0] == 2
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "a-long-password")  # right, but too soon
    code, _, err = cli(env, capsys, "--user", "analyst-user")
    assert code == 2 and "too many failed logins" in err and err.count("\n") == 1


def test_cli_help_shows_the_interface(capsys):
    with pytest.raises(SystemExit):
        main(["cohort", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--data", "--db", "--user", "--password-stdin", "--where", "--group-by", "--stat", "--json",
    ):  # fmt: skip
        assert flag in text
    assert "prevalence:OUTCOME" in text and "<11" in text


def test_results_print_as_json_and_as_a_table(env):
    result = ask(
        env,
        where=["age >= 30"],
        group_by=["sex"],
        stats=["prevalence:diabetes", "mean:bmi", "histogram:age"],
    )
    data = json.loads(result.to_json())
    assert data["privacy_budget"] == {"total": 10.0, "spent": 0.5, "left": 9.5}
    assert data["group_by"] == ["sex"] and [c["sex"] for c in data["cells"]] == ["F", "M"]
    assert {"patient_count", "diabetes_case_count", "diabetes_prevalence", "bmi_mean"} <= set(
        data["cells"][0]
    )
    assert_no_small_counts(data)
    text = result.text()
    assert text.splitlines()[0].split() == [
        "sex", "patient_count", "diabetes_case_count", "diabetes_prevalence", "bmi_mean",
    ]  # fmt: skip
    assert "histogram of age" in text and "privacy budget left: 9.5 of 10" in text


# ---------------------------------------------------------------- page
def test_viewers_cannot_open_the_explorer(env):
    at = page(env, "viewer")
    assert [t.value for t in at.title] == ["Not available for your role"]


def test_the_page_says_when_there_is_no_data(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch, federation=False)
    at = page(env, "analyst")
    assert "No federation found" in at.info[0].value


def test_the_page_offers_the_schema_and_shows_the_budget(env):
    at = page(env, "analyst")
    assert not at.exception
    assert [t.value for t in at.title] == ["Cohort explorer"]
    assert at.metric[0].value == "10 of 10"
    labels = [m.label for m in at.multiselect]
    assert labels == ["Filter on", "Group by", "Statistics"]
    assert "histogram:age" in at.multiselect[2].options
    assert "sex" in at.multiselect[1].options and "bmi" in at.multiselect[1].options
    assert "Choose filters" in at.info[0].value


def test_a_bad_filter_shows_an_error_and_spends_nothing(env):
    at = page(env, "analyst")
    at.multiselect[0].set_value(["sex"]).run()
    at.multiselect[1].set_value([])  # no sex at all
    at.button[0].click().run()
    assert at.error[0].value == "Choose at least one value of sex"
    assert at.metric[0].value == "10 of 10"


def test_the_audit_section_is_for_admins(env):
    assert [t.value for t in page(env, "analyst", AUDIT).title] == ["Not available for your role"]
    at = page(env, "admin", AUDIT)
    assert "No cohort query yet" in at.info[0].value
    ask(env, group_by=["smoking"])
    at = page(env, "admin", AUDIT)
    log = at.dataframe[0].value
    assert log["user"].to_list() == ["analyst-user"] and log["status"].to_list() == ["answered"]


# ---------------------------------------------------------------- charts and layers
def test_charts_have_titles_and_axis_units(env):
    result = ask(
        env, group_by=["age", "sex"], stats=["prevalence:diabetes", "mean:bmi", "histogram:age"]
    )
    values, dims = result.values(), list(result.release.dimensions)
    units = {"age": "years", "bmi": "kg/m2"}
    built = [
        charts.count_bars(values, dims, units),
        charts.prevalence_bars(values, dims, "diabetes", units),
        charts.mean_bars(values, dims, "bmi", units),
        charts.histogram(result.histograms("age"), "age", "years", cell="50–59 · F"),
    ]
    for chart, y_unit in zip(built, ["(count)", "(%)", "(kg/m²)", "(count)"], strict=True):
        assert isinstance(chart, alt.Chart)
        spec = chart.to_dict()
        assert spec["title"] and spec["encoding"]["y"]["title"].endswith(y_unit)
        assert spec["encoding"]["x"]["title"].endswith("(years)")
    assert built[0].to_dict()["encoding"]["x"]["title"] == "Age band (years)"
    assert built[3].to_dict()["encoding"]["x"]["title"] == "Age (years)"


def test_hidden_cells_are_null_in_chart_frames(env):
    result = ask(env, where=["age >= 80"], group_by=["hospital", "smoking"])
    values = result.values()
    assert values.schema["patient_count"] == pl.Int64
    hidden = [
        c["patient_count"] for c in result.release.cells if isinstance(c["patient_count"], str)
    ]
    assert values["patient_count"].null_count() == len(hidden) > 0


def test_the_cohort_library_never_imports_streamlit():
    for path in (ROOT / "healthsync" / "cohort").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "streamlit"], path


# ---------------------------------------------------------------- issue 14: what the page shows
def shown(env: AppEnv, result) -> AppTest:
    """The page as it shows ``result`` (the session's last answer), without asking again."""
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    env.log_in(at, "analyst")
    at.session_state["cohort_result"] = (str(env.fed_dir), result, [])
    return at.run()


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_the_age_filter_is_in_whole_years(env):
    at = page(env, "analyst")
    at.multiselect[0].set_value(["age", "bmi"]).run()
    age, bmi = at.slider[0], at.slider[1]
    assert age.label == "Age (years)" and age.value == (18, 100)
    assert age.proto.step == 1 and age.proto.format == "%d"
    assert bmi.label == "BMI (kg/m²)" and bmi.proto.step == 0.5


def test_results_name_hospitals_as_the_manifest_does(env):
    names = {h.id: h.name for h in load_federation(env.fed_dir).hospitals}
    at = shown(env, ask(env, group_by=["hospital"]))
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["hospital"]) <= set(names.values())
    chart = at.get("vega_lite_chart")[0].proto.SerializeToString()  # the spec and its data
    assert all(n.encode() in chart for n in names.values())
    assert not any(h.encode() in chart for h in names)


def test_axes_use_the_schemas_names_and_units(env):
    at = shown(env, ask(env, group_by=["bmi"], stats=["count", "mean:hba1c"]))
    titles = [s["encoding"]["x"]["title"] for s in chart_specs(at)]
    titles += [s["encoding"]["y"]["title"] for s in chart_specs(at)]
    assert "BMI band (kg/m²)" in titles and "Mean HbA1c (%)" in titles
    assert not [t for t in titles if "Bmi" in t or "kg/m2" in t]


def test_a_histogram_query_draws_no_single_all_patients_bar(env):
    at = shown(env, ask(env, stats=["histogram:age"]))
    assert not at.exception
    titles = [
        s["title"] if isinstance(s["title"], str) else s["title"]["text"] for s in chart_specs(at)
    ]
    assert titles == ["Distribution of age (all patients)"]


def test_the_form_says_what_a_query_will_cost_before_it_runs(env):
    at = page(env, "analyst")
    preview = next(c.value for c in at.caption if c.value.startswith("Cost:"))
    assert "up to ε 0.5 at each hospital asked (all 3" in preview
    assert "nothing if every number was released before" in preview
    assert "(how_it_works#epsilon)" in preview
    assert at.metric[0].value == "10 of 10"  # a preview spends nothing


def test_every_cohort_chart_caption_links_to_how_it_works(env):
    at = shown(env, ask(env, group_by=["sex"], stats=["count", "mean:bmi", "histogram:age"]))
    charts_drawn = len(at.get("vega_lite_chart"))
    links = [c for c in at.caption if "](how_it_works#" in c.value]
    assert charts_drawn == 3 and len(links) >= charts_drawn
