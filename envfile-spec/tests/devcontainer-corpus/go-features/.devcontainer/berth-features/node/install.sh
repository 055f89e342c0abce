#!/usr/bin/env bash
echo "installing node $VERSION"
