def add_console(app):
    pass
