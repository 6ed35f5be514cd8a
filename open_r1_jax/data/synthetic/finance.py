"""``finance``: quarterly earnings releases of fictional companies, the domain of the LoRA demo
(``configs/lora_tiny.yaml``). It is English prose with figures, tickers and dates, which the
embedded pretraining corpus (Python source) does not contain. The figures are consistent within a
release (growth is computed from last year's figure, per-share income from income and shares), so
there is structure to learn beyond the templates.
"""

from __future__ import annotations

import random

from open_r1_jax.data.sources import Document

_FIRST = ("Northwind", "Bluestone", "Harbor", "Crescent", "Summit", "Ironwood", "Pioneer", "Lakeshore",
          "Granite", "Silverline", "Evergreen", "Redwood", "Atlas", "Meridian", "Keystone", "Oakmont")  # fmt: skip
_SECOND = ("Capital", "Industries", "Logistics", "Energy", "Foods", "Materials", "Semiconductor", "Health",
           "Retail", "Software", "Insurance", "Chemicals")  # fmt: skip
_SUFFIX = ("Holdings", "Group", "Corp.", "Inc.", "plc", "Partners")
_QUARTERS = ("first", "second", "third", "fourth")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
_DRIVERS = ("higher volumes in its core segment", "price increases that held through the quarter",
            "the integration of an acquired business", "strong demand from industrial customers",
            "lower input costs", "growth in recurring subscription revenue", "a recovery in export markets",
            "weaker consumer spending", "unfavourable currency movements", "destocking by distributors")  # fmt: skip


def _money(millions: float) -> str:
    return f"${millions / 1000:,.2f} billion" if millions >= 1000 else f"${millions:,.1f} million"


def _release(rng: random.Random) -> str:
    name = f"{rng.choice(_FIRST)} {rng.choice(_SECOND)} {rng.choice(_SUFFIX)}"
    ticker = "".join(w[0] for w in name.split()[:2]).upper() + rng.choice("ABCDEFGHKLMNPRSTX")
    year, q = rng.randint(2015, 2025), rng.randrange(4)
    last = rng.uniform(80, 4000)
    growth = rng.gauss(4.0, 9.0)
    revenue = last * (1 + growth / 100)
    margin_last = rng.uniform(4, 30)
    margin = max(0.5, margin_last + rng.gauss(0, 2.5))
    shares = rng.uniform(20, 600)
    income = revenue * margin / 100 * rng.uniform(0.6, 0.8)
    income_last = last * margin_last / 100 * rng.uniform(0.6, 0.8)
    eps, eps_last = income / shares, income_last / shares
    direction = "rose" if growth >= 0 else "fell"
    widened = "widened" if margin >= margin_last else "narrowed"
    driver = rng.choice(_DRIVERS[:7] if growth >= 0 else _DRIVERS[7:])
    dividend = round(eps * rng.uniform(0.2, 0.5), 2)
    pay_month = _MONTHS[(3 * q + 4) % 12]
    lines = [
        f"{name} ({ticker}) reported {_QUARTERS[q]}-quarter {year} results.",
        f"Revenue {direction} {abs(growth):.1f}% year over year to {_money(revenue)}, from {_money(last)}, "
        f"driven by {driver}.",
        f"Operating margin {widened} to {margin:.1f}% from {margin_last:.1f}%.",
        f"Net income was {_money(income)}, or ${eps:.2f} per diluted share, compared with "
        f"{_money(income_last)}, or ${eps_last:.2f} per share, a year earlier.",
    ]
    if dividend > 0.01:
        lines.append(
            f"The board declared a quarterly dividend of ${dividend:.2f} per share, payable on {pay_month} "
            f"{rng.randint(1, 28)} to shareholders of record."
        )
    low = revenue * 4 * rng.uniform(0.97, 1.0)
    verb = rng.choice(("raised", "reaffirmed", "lowered") if growth >= 0 else ("lowered", "reaffirmed"))
    lines.append(
        f"Management {verb} its full-year outlook and now expects revenue of {_money(low)} to "
        f"{_money(low * rng.uniform(1.01, 1.04))}."
    )
    cash, debt = revenue * rng.uniform(0.1, 1.5), revenue * rng.uniform(0.0, 2.0)
    lines += [
        "",
        "Selected balance sheet items (in millions):",
        f"  Cash and equivalents    {cash:>10,.1f}",
        f"  Total debt              {debt:>10,.1f}",
        f"  Net debt                {debt - cash:>10,.1f}",
        f"  Shares outstanding      {shares:>10,.1f}",
    ]
    return "\n".join(lines) + "\n"


def finance_documents(n: int = 800, seed: int = 0) -> list[Document]:
    rng = random.Random(f"finance-{seed}")
    return [Document(f"synthetic:finance/{i:05d}", "\n".join(_release(rng) for _ in range(3))) for i in range(n)]
