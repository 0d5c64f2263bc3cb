#!/usr/bin/env python3
"""Held-out side pairs for probe.sh: from a prepared manifest (MANIFEST, volumes under BASE), every
volume whose impression states a one-sided pleural effusion, with its report and the report with
the effusion sentences' side swapped. Writes side_valid.jsonl, side_texts.csv, sides.json here.

usage: python3 make_side_pairs.py MANIFEST BASE
"""
import json,re,csv,sys
src,base=sys.argv[1],sys.argv[2]
ents=[json.loads(l) for l in open(src)]
def imp(r):
    m=re.search(r'Impression:(.*)',r,re.S); return m.group(1) if m else ''
def side(r):
    s=imp(r); return 'R' if 'Right pleural effusion' in s else 'L' if 'Left pleural effusion' in s else ''
def swap_sent(s):
    return re.sub(r'\b(right|left|Right|Left)\b',lambda m:{'right':'left','left':'right','Right':'Left','Left':'Right'}[m.group(1)],s)
def swap(r):
    out=[]
    for p in re.split(r'(?<=\.)\s+',r):
        pl=p.lower()
        if 'effusion' in pl and 'pericard' not in pl and ('pleural' in pl or 'fluid' in pl): p=swap_sent(p)
        out.append(p)
    return ' '.join(out)
keep=[]
for e in ents:
    if not side(e['report']): continue
    s=swap(e['report']); assert side(s) and side(s)!=side(e['report'])
    keep.append((e,s))
with open('side_valid.jsonl','w') as f:
    for e,_ in keep:
        e=dict(e); e['volume']=base+'/'+e['volume']; f.write(json.dumps(e)+'\n')
with open('side_texts.csv','w') as f:
    w=csv.writer(f); w.writerow(['VolumeName','prompt'])
    for e,s in keep: w.writerow([e['id']+'_true',e['report']]); w.writerow([e['id']+'_swap',s])
json.dump([side(e['report']) for e,_ in keep],open('sides.json','w'))
print(len(keep),'sided volumes')
