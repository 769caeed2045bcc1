"""A directory's country → ISO 3166-1 alpha-2, the shipment's `country_code_2` (PROTOCOL.md §4).

Graph's user `country` is free text ("US", "United States", "UK"; "user resource type", v1.0);
PingOne's `address.countryCode` is alpha-2 already. `alpha2()` asks pycountry (the ISO 3166-1
codes and names: alpha-2, alpha-3, name, official and common names, case-insensitive) and then
a short list of other names commonly typed into directories; anything else is None and the user
falls back to the configuration's default address (never a guess).
"""

from __future__ import annotations

import re
import unicodedata

import pycountry

#: names pycountry does not know (it knows "United States", "USA", "Germany", "Côte d'Ivoire",
#: "South Korea", "Czechia", ...), keyed by their normalised form (`_normal`)
ALIASES: dict[str, str] = {
    "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "u s": "US", "u s a": "US", "united states of america": "US",
    "america": "US", "russia": "RU", "north korea": "KP", "korea": "KR", "republic of korea": "KR",
    "holland": "NL", "the netherlands": "NL", "czech republic": "CZ", "ivory coast": "CI",
    "cote d ivoire": "CI", "uae": "AE", "emirates": "AE", "republic of ireland": "IE", "eire": "IE",
    "turkey": "TR", "turkiye": "TR", "vatican": "VA", "east timor": "TL", "cape verde": "CV",
    "macedonia": "MK", "swaziland": "SZ", "burma": "MM", "laos": "LA", "syria": "SY", "moldova": "MD",
    "dr congo": "CD", "drc": "CD", "democratic republic of the congo": "CD", "republic of the congo": "CG",
    "deutschland": "DE", "espana": "ES", "osterreich": "AT", "schweiz": "CH", "suisse": "CH", "svizzera": "CH",
    "brasil": "BR", "italia": "IT", "sverige": "SE", "norge": "NO", "danmark": "DK", "suomi": "FI",
    "nederland": "NL", "polska": "PL", "belgie": "BE", "belgique": "BE", "nippon": "JP", "nihon": "JP",
}


def _normal(text: str) -> str:
    """Lower case, accents and punctuation dropped, spaces collapsed ("Côte d'Ivoire" → "cote d ivoire")."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", plain.lower()).split())


def alpha2(value: str | None) -> str | None:
    """The ISO 3166-1 alpha-2 code for a directory's country value ("US", "us", "USA",
    "United States", "Deutschland"), or None when it names no one country."""
    if not value or not value.strip() or any(c.isdigit() for c in value):
        return None  # numeric codes ("840") are not what an administrator types for a country
    text = value.strip()
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return ALIASES.get(_normal(text))
