"""Optional dependencies: one error naming the extra when the package is missing, the package's own error
otherwise."""

import sys

import pytest

# The names under test, imported in one place.
from progdistill.core.optional import MissingExtraError, require


def test_an_installed_module_is_returned():
    import json

    assert require("json", "none", "a test") is json
    assert require("os.path", "none", "a test") is sys.modules["os.path"]


def test_a_missing_package_names_the_feature_and_the_extra():
    with pytest.raises(
        MissingExtraError,
        match=r"the frobnicator needs the optional package "
        r"'progdistill_no_such_pkg', which is not installed: "
        r'pip install "progdistill\[frob\]"',
    ) as info:
        require("progdistill_no_such_pkg.sub", "frob", "the frobnicator")
    assert isinstance(info.value, ImportError)  # callers that catch ImportError still do


def test_a_missing_dependency_of_an_installed_package_is_its_own_error(tmp_path, monkeypatch):
    # An installed package whose import fails on something else: that error, not "install the extra".
    (tmp_path / "brokenpkg_for_test").mkdir()
    (tmp_path / "brokenpkg_for_test" / "__init__.py").write_text("import progdistill_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("brokenpkg_for_test", "broken", "a test")
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "progdistill_missing_dependency"


def test_package_names_the_import_whose_absence_means_the_extra_is_missing():
    with pytest.raises(MissingExtraError, match=r"'progdistill_absent_top'.*progdistill\[extra\]"):
        require("progdistill_absent_top.sub", "extra", "a feature", package="progdistill_absent_top")
    # A module missing inside a package that is not the named one: not the extra's absence.
    with pytest.raises(ModuleNotFoundError) as info:
        require("json.no_such_submodule", "extra", "a feature", package="other")
    assert not isinstance(info.value, MissingExtraError)
