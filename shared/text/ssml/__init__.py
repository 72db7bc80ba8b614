"""SSML input (`text_format: "ssml"`): the W3C SSML 1.1 subset that Azure, Amazon Polly and Google Cloud TTS share,
mapped onto what the farm already does.

`parse_ssml(document, default_language, default_voice)` reads a document into an `SsmlDocument`: the plain text
that is spoken (the job's stored `text`, which subtitles and word timings follow), a list of pieces and warnings.
A piece is either `Speech` (text with its language, voice, speed factor, gain and one-off lexicon entries) or a
`Break` (silence of a length); `Mark`s point at a character of a piece (or at a break, or the end).

- `speak`, `p`, `s`: a `p` or `s` ends a sentence (a full stop is added when its text has none);
- `break`: `time` ("500ms", "1.5s", at most MAX_BREAK_S) or `strength` (BREAK_STRENGTHS) replaces the farm's pause
  between segments with silence of that length; `<break/>` alone is `medium`;
- `say-as interpret-as`: cardinal, ordinal, characters (spell-out, verbatim), digits, date (`format` mdy, dmy,
  ymd, md, dm, ym, my, y, m, d, or Google's yyyymmdd style), time, telephone, currency: written out as words of
  the piece's language (en, zh, ja) with the farm's normaliser (shared/text/normalization/);
- `sub alias`: the alias is spoken (and is what the plain text holds);
- `phoneme alphabet ph`: ipa, x-sampa (converted to IPA), arpabet (en), pinyin / x-amazon-pinyin (zh), kana /
  yomigana / x-amazon-yomigana (ja): a one-off lexicon entry for the term, within its piece (shared/text/lexicon.py);
- `prosody rate` (RATES, "80%", "+20%", "-10%", "1.5"; nested rates multiply) is the piece's speed factor (the
  worker clamps job speed x factor to the engine's range) and `volume` (VOLUMES_DB, "+6dB", "-3dB") its gain;
- `lang xml:lang` (and xml:lang on speak, p, s, voice): the piece's language ("en-US" -> en, "cmn-CN" -> zh);
- `voice name`: the piece's voice (a stock voice or a cloned voice id), so one job can hold a dialogue;
- `mark name`: reported as `result.marks` [{name, time_s}] on the output's timeline.

Anything else (`audio`, `emphasis`, `prosody pitch`, vendor extensions such as `amazon:effect`) is spoken as its
text, with a warning naming it. XML that is not well-formed, a DTD (so no entity-expansion bomb) or a root other
than `speak` is refused with `SsmlError` (400, code `invalid_ssml`, line and column in the message). Parsing goes
through defusedxml's SAX reader.
"""

from shared.text.ssml.parse import Break, Mark, Speech, SsmlDocument, SsmlError, looks_like_ssml, parse_ssml
from shared.text.ssml.values import BREAK_STRENGTHS, MAX_BREAK_S, TEXT_FORMATS, rate_factor, xsampa_to_ipa

__all__ = [
    "BREAK_STRENGTHS", "MAX_BREAK_S", "TEXT_FORMATS", "Break", "Mark", "Speech", "SsmlDocument", "SsmlError",
    "looks_like_ssml", "parse_ssml", "rate_factor", "xsampa_to_ipa",
]  # fmt: skip
