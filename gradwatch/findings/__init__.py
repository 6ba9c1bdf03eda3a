"""What the wrong components say about the bug: its kind (patterns shared by a tensor's wrong
components) and where it enters (the places on J's backward graph that explain the verdicts).
The public :mod:`gradwatch.diagnosis` applies them to a report.
"""
