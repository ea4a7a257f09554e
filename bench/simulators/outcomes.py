"""Deterministic outcomes, drawn from the payment code's last two digits so that tests and load
can ask for any outcome. The digits mirror the ISO 8583 code the switch answers:

| last two digits | the channel answers                         | the switch answers |
| --------------- | ------------------------------------------- | ------------------ |
| 51              | insufficient funds                          | 51                 |
| 54              | payment code expired                        | 54                 |
| 14              | invalid payment code                        | 14                 |
| 05              | declined                                    | 05                 |
| 09              | user paying (customer still confirming)     | 09                 |
| 96              | system error: outcome unknown               | 91 (UNKNOWN)       |
| 98              | success, after the simulator's ``slow_ms``  | 00                 |
| anything else   | success                                     | 00                 |
"""

from __future__ import annotations

VERDICT_BY_SUFFIX = {
    "51": "NOTENOUGH",
    "54": "EXPIRED",
    "14": "INVALID",
    "05": "DECLINED",
    "09": "USERPAYING",
    "96": "SYSTEMERROR",
}
SLOW_SUFFIX = "98"


def verdict_for(auth_code: str) -> str:
    return VERDICT_BY_SUFFIX.get(auth_code[-2:], "SUCCESS")


def is_slow(auth_code: str) -> bool:
    return auth_code.endswith(SLOW_SUFFIX)
