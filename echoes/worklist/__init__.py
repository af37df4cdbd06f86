"""Worklist items: :mod:`files` reads the RIS's JSON files (both forms), keeps
them in memory and watches the folder; :mod:`match` is the one matching
engine (PS3.4 C.2.2.2: single value, wildcards, ranges, UID lists,
sequences), also used by the index's queries.
"""
