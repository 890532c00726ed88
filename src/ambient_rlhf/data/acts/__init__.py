"""Dialog acts in nested comment trees and the feedback their replies give
(``ambient data acts``): :mod:`.trees` (the trees), :mod:`.retrieve` (BM25 over cue
queries), :mod:`.feedback` (who replied, and what the reply says), :mod:`.build` (acts.parquet)."""
