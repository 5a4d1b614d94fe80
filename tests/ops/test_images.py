"""Dockerfiles: hadolint-clean, multi-stage, pinned, non-root, only their own extra."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops._deploy_check import dc

DOCKERFILES = dc.dockerfiles()


def test_one_dockerfile_per_service() -> None:
    assert sorted(p.name for p in DOCKERFILES) == sorted(
        f"{s}.Dockerfile" for s in ("embedding", "vector", "inference", "gateway")
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(path: Path) -> None:
    assert dc.hadolint_problems(path) == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_policy(path: Path) -> None:
    assert dc.dockerfile_policy_problems(path) == []


def test_only_the_embedding_image_installs_torch() -> None:
    for path in DOCKERFILES:
        instructions = " ".join(args for _, args in dc._dockerfile_instructions(path.read_text()))
        assert ("torch" in instructions) == (path.name == "embedding.Dockerfile"), path.name


def test_inference_image_builds_llama_cpp_with_the_makefile_flags() -> None:
    text = (dc.DOCKER / "inference.Dockerfile").read_text()
    flags = dc.makefile_llama_cmake_args()
    assert "-DGGML_NATIVE=OFF" in flags
    assert f'ARG LLAMA_CMAKE_ARGS="{flags}"' in text
    assert 'CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" pip install' in text


def test_policy_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim\n"
        'RUN pip install --no-cache-dir torch==2.13.0 "./[gateway,embedding]"\n'
        'ENTRYPOINT ["python", "-m", "lodestar.services.vector"]\n'
    )
    problems = " | ".join(dc.dockerfile_policy_problems(bad))
    for expected in (
        "not a multi-stage build",
        "not pinned",
        "non-root USER",
        "expected only [gateway]",
        "ENTRYPOINT",
        "mentions torch",
        "console's scripts",
        "dockerignore",
    ):
        assert expected in problems


def test_hadolint_reports_findings(tmp_path: Path) -> None:
    bad = tmp_path / "x.Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    problems = dc.hadolint_problems(bad)
    assert problems
    assert "DL3006" in problems[0]


def test_vector_image_runs_under_an_init(tmp_path: Path) -> None:
    # The vector service starts the engine process, which starts index builds:
    # PID 1 of its image must reap orphans, so the service cannot be PID 1.
    assert dc.dockerfile_policy_problems(dc.DOCKER / "vector.Dockerfile") == []
    text = (dc.DOCKER / "vector.Dockerfile").read_text()
    bare = tmp_path / "vector.Dockerfile"
    bare.write_text(text.replace('ENTRYPOINT ["tini", "--", ', "ENTRYPOINT ["))
    (tmp_path / "vector.Dockerfile.dockerignore").write_text("*\n")
    problems = dc.dockerfile_policy_problems(bare)
    assert len(problems) == 1, problems
    assert "does not start with tini" in problems[0]


def test_gateway_image_fetches_the_consoles_scripts_in_its_own_stage() -> None:
    # The console's vendored scripts are git-ignored: the image makes its own copy
    # with the same script (and so the same pinned versions) as make console-assets.
    text = (dc.DOCKER / "gateway.Dockerfile").read_text()
    assert "RUN ./console_assets.sh /tmp/npm /console/vendor" in text
    copy = (
        "COPY --from=console /console/vendor ./src/lodestar/services/gateway/console/static/vendor"
    )
    assert copy in text
    assert text.index(copy) < text.index('RUN pip install --no-cache-dir "./[gateway]"')
    makefile = (dc.REPO / "Makefile").read_text()
    assert "scripts/console_assets.sh $(CONSOLE_NPM) $(CONSOLE_VENDOR)" in makefile
