"""Tests of the component and trainer servers, their common parts, the pmis command."""
