"""The browser client: static HTML, CSS and JavaScript, served by the server's HTTP port.

No Python here; this file only makes the folder a package, so the server finds the files with
`importlib.resources` whether it is installed editable or from a wheel.
"""
