"""The review page (template, script, style sheet, words) and the review gauges.

A package so that its files ship with the wheel; the routes are in ``page.py``.
"""
