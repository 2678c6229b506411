"""Settings for the whole suite.

Hypothesis's per-example deadline (200 ms by default) is a timing assertion:
on the shared 2-core machines the suite runs on, a busy minute made kernel
property tests fail with ``DeadlineExceeded`` while their properties held
(session 3, load average 14-31). The suite asserts behaviour, never time
(docs/reliability.md); speed is measured in bench/.
"""

from hypothesis import settings

settings.register_profile("usagi", deadline=None)
settings.load_profile("usagi")
