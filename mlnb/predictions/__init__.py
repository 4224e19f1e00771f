"""The prediction log and what monitoring reads from it.

``log`` appends every prediction and label durably and reads them back as a
table; ``files`` names the day files of a log folder and reads a day whether
it is open (``.jsonl``), closed (``.jsonl.gz``) or both; ``retention``
compresses closed days and prunes the days a retention setting does not keep;
``window`` picks the rows a monitor check looks at, scores the labeled ones
and turns them into training data.
"""
