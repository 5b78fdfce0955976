"""The check loop both SDK scripts share (`sdk_check.py`, `conversations.py`).

Every check runs on its own; each prints `ok NAME`, `skip NAME (why)` or `FAIL NAME: ...` with
the failing request where there was one and the line of the script nearest the failure; the
last line is `N passed, M failed` (crates/server/tests/it/sdk.rs reads it), and the exit status is
1 if any check failed.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import httpx
from langgraph_sdk.errors import APIStatusError

# The keys of Spindle's error body; LangGraph's has only `detail`.
ERROR_KEYS = ("detail", "code", "request_id")


class CheckFailed(Exception):
    """A check's expectation that did not hold (its message says expected and got)."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_eq(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


def expect_error_body(body: Any, what: str, keys: tuple[str, ...] = ERROR_KEYS) -> None:
    expect(isinstance(body, dict), f"{what}: error body is not a JSON object: {body!r}")
    for key in keys:
        expect(
            isinstance(body.get(key), str) and body[key] != "",
            f"{what}: error body has no string `{key}`: {body!r}",
        )


def expect_error(
    error_class: type[APIStatusError],
    status: int,
    call: Callable[[], Any],
    what: str,
    keys: tuple[str, ...] = ERROR_KEYS,
) -> APIStatusError:
    """Runs `call`, which must raise the SDK's `error_class` with HTTP `status` and an error
    body with string `keys`; with `request_id` among them, it must be the `x-request-id`
    header, and the SDK's message the body's `detail`."""
    try:
        result = call()
    except APIStatusError as e:
        if not isinstance(e, error_class) or e.status_code != status:
            raise CheckFailed(
                f"{what}: expected {error_class.__name__} (HTTP {status}), got "
                f"{type(e).__name__} (HTTP {e.status_code}) with body {e.body!r}"
            ) from None
        expect_error_body(e.body, what, keys)
        if "request_id" in keys:
            expect_eq(e.message, e.body["detail"], f"{what}: the SDK's error message")
            expect_eq(
                e.request_id, e.body["request_id"], f"{what}: x-request-id header vs body request_id"
            )
        return e
    except httpx.HTTPStatusError as e:
        raise CheckFailed(
            f"{what}: expected the SDK's {error_class.__name__} (HTTP {status}), got a bare "
            f"httpx {type(e).__name__} (HTTP {e.response.status_code}): {e.response.text!r}"
        ) from None
    raise CheckFailed(
        f"{what}: expected {error_class.__name__} (HTTP {status}), but the call returned {result!r}"
    )


def script_line(e: BaseException, script: str) -> int | None:
    """The line of `script` nearest the failure (the failing call in the check)."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == script]
    return lines[-1] if lines else None


def run(
    checks: list[Callable[[], None]],
    script: str,
    only: list[str] = (),
    skip: Callable[[Callable[[], None]], str | None] = lambda check: None,
) -> int:
    """Runs `checks` (only those named in `only`, if any); `skip(check)` gives a reason to skip
    one. `script` is the calling script's `__file__`, for the failure's line."""

    passed = failed = skipped = 0
    for check in checks:
        name = check.__name__.removeprefix("check_")
        if only and name not in only:
            continue
        why = skip(check)
        if why:
            skipped += 1
            print(f"skip {name} ({why})", flush=True)
            continue
        try:
            check()
        except CheckFailed as e:
            error, failure = e, f"{e}"
        except APIStatusError as e:
            error, failure = e, (
                f"unexpected {type(e).__name__} (HTTP {e.status_code}) from {e.request.method} "
                f"{e.request.url} (body {e.request.content!r}): {e.body!r}"
            )
        except httpx.HTTPStatusError as e:
            error, failure = e, (
                f"HTTP {e.response.status_code} from {e.request.method} {e.request.url} "
                f"(body {e.request.content!r}): {e.response.text!r}"
            )
        except httpx.RequestError as e:
            # No HTTP response at all (connection dropped, timeout): say which request.
            error, failure = e, f"{type(e).__name__} on {e.request.method} {e.request.url}: {e}"
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            where = traceback.extract_tb(e.__traceback__)[-1]
            error, failure = e, (
                f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno}: {where.line})"
            )
        else:
            passed += 1
            print(f"ok {name}", flush=True)
            continue
        failed += 1
        print(f"FAIL {name}: {failure} (check line {script_line(error, script)})", flush=True)
    if skipped:
        print(f"{skipped} skipped", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0
