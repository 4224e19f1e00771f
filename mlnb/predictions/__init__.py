"""The prediction log and what monitoring reads from it.

``log`` appends every prediction and label durably and reads them back as a
table; ``window`` picks the rows a monitor check looks at, scores the labeled
ones and turns them into training data.
"""
