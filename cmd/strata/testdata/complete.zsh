# zsh -f complete.zsh SCRIPT LINE prints, one a line, the words zsh's
# completion system offers for LINE once SCRIPT is loaded. It types LINE
# and a Tab into an interactive zsh on a pseudo-terminal (zsh/zpty), with
# compadd wrapped to print what completion functions add.
zmodload zsh/zpty || exit 2
integer n=0
step() { # run $1 in the zsh on the pty and wait until it has run
  (( n++ ))
  zpty -w z "$1; print STEP\"\"$n"
  zpty -r -m z out "*STEP$n*" || exit 2
}
zpty z zsh -f -i
step 'autoload -U compinit && compinit -u -D'
step "source ${(q)1}"
step 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local h; for h in $__hits; do print -r -- "CAND""IDATE:$h"; done
}'
step '_t() { zle complete-word; print -r -- "COMP""DONE" }; zle -N _t; bindkey "^I" _t'
zpty -w -n z "$2"$'\t'
zpty -r -m z out '*COMPDONE*' || exit 2
print -r -- "${out//$'\r'/}" | grep -a -o -E 'CANDIDATE:[^[:cntrl:]]*' | sed 's/^CANDIDATE://' | sort -u
zpty -d z
