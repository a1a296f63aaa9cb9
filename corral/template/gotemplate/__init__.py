"""A Python interpreter for the subset of Go's text/template that chat templates use.

Owns: lexer, parser, executor and Go value semantics, exposed as `GoTemplate` and
`TemplateError`. Does not own chat data conversion (`corral.template.prompt`).
"""

from corral.template.gotemplate.errors import TemplateError
from corral.template.gotemplate.template import GoTemplate
from corral.template.gotemplate.values import MISSING, GoStruct

__all__ = ["MISSING", "GoStruct", "GoTemplate", "TemplateError"]
