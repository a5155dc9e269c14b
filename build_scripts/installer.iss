; Inno Setup 6 script for the CMS Agent (the contract: docs/CONTRACT.md).
; Built by `cargo xtask installer` (ISCC.exe, under Wine on Linux) as
;   ISCC /DAppVersion=X.Y.Z /DDistDir=<dist> [/DTrustedRoot=<root.json>] installer.iss
;     ->  <dist>\cms_agent_setup-X.Y.Z.exe
; from the binaries `cargo xtask dist` put in <dist>\windows-x86_64\ (and, with
; `--trusted-root`, the backend's TUF root it put there as root.json).
;
; What it does:
;   - installs cms_agent.exe and updater.exe, and per machine the backend's TUF root as
;     {app}\root.json when built with /DTrustedRoot; nothing else: config.json is never in the
;     payload (the agent writes it in its data folder, docs/CONTRACT.md), and neither is any
;     test file;
;   - per-machine (admin, Program Files; the default) or per-user (no admin,
;     %LOCALAPPDATA%\Programs) install: /ALLUSERS or /CURRENTUSER on the command line, or the
;     dialog (PrivilegesRequiredOverridesAllowed);
;   - silent-capable: /VERYSILENT /SUPPRESSMSGBOXES [/LOG=file];
;   - before copying files (install and upgrade) and at uninstall, stops the agent gracefully:
;     it waits for an update in flight (the updater named in the update journal), stops the
;     per-machine service CMSAgent through the Service Control Manager (60 s), asks any other
;     agent of this install to stop (`cms_agent --stop`), and only then ends the process named
;     in agent.lock, and only if it runs this install's cms_agent.exe. Never by image name;
;   - after install: `cms_agent --enable-autostart` with the settings given as /SERVER=URL,
;     /ENROLLMENTTOKEN=T, /GROUP=NAME, /DOWNLOADLIMIT=KBPS, /METERED=auto|yes|no and /TRUSTEDROOT=FILE (the TUF root to pin), which saves them in the
;     agent's config.json and registers the service CMSAgent (per machine: LocalSystem,
;     automatic start, recovery actions) or the HKCU Run value (per user, `--per-user`); then
;     starts the service through the SCM, or the per-user agent; /NOSTART skips starting it;
;   - the TUF root: /TRUSTEDROOT=FILE wins; else a per-machine install of a setup built with
;     /DTrustedRoot pins the embedded {app}\root.json (`--trusted-root`), so the service never
;     trusts the server's root on first use; not when no server is known (neither /SERVER= nor
;     one in config.json: the agent needs one to pin), nor when the agent already has a root
;     pinned (it follows the server's signed root rotations from there; an older embedded root
;     would be refused). Per-user installs keep trust on first use unless /TRUSTEDROOT= is given;
;   - uninstall: stops the agent (above), `cms_agent --disable-autostart` (deletes the service or
;     the Run value, and the IPC secret; done here directly if the exe fails), removes the
;     program files; the data folder (config.json, logs) is kept unless the uninstaller is given
;     /PURGE, or the user says so when asked (interactive uninstall only);
;   - with /DSign (`cargo xtask installer --sign`, which also passes ISCC /Scms=<sign command>):
;     Authenticode-signs the setup exe, the uninstaller it embeds (also Setup's temporary
;     self-copy) and any of the two programs not signed yet.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef DistDir
  #define DistDir "..\dist"
#endif

#ifdef Sign
  #define SignFlags "signonce"
#else
  #define SignFlags ""
#endif

#define AppName "CMS Agent"
#define AgentExe "cms_agent.exe"
#define UpdaterExe "updater.exe"
; Data folder name under %PROGRAMDATA% (admin) or %LOCALAPPDATA% (per user): docs/CONTRACT.md.
#define DataFolder "CMSAgent"

[Setup]
AppId={{D1C8D198-37BA-40D3-874D-19DD92FF86D8}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=CMS Agent project
VersionInfoVersion={#AppVersion}
; {autopf} in effect; spelled out because Wine 8 cannot expand {userpf} (its
; SHGetKnownFolderPath lacks FOLDERID_UserProgramFiles), which broke per-user installs there.
DefaultDirName={code:DefaultInstallDir}
DisableProgramGroupPage=yes
PrivilegesRequired=admin
PrivilegesRequiredOverridesAllowed=commandline dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir={#DistDir}
OutputBaseFilename=cms_agent_setup-{#AppVersion}
Compression=lzma2
SolidCompression=yes
WizardStyle=modern
UninstallDisplayIcon={app}\{#AgentExe}
UninstallDisplayName={#AppName}
SetupLogging=yes
; The agent is stopped by [Code] below (StopAgent), not by the Restart Manager.
CloseApplications=no
RestartApplications=no
#ifdef Sign
SignTool=cms
SignedUninstaller=yes
#endif

[Files]
; Only the two programs. Never add config.json or anything from outside dist\windows-x86_64.
Source: "{#DistDir}\windows-x86_64\{#AgentExe}"; DestDir: "{app}"; Flags: ignoreversion {#SignFlags}
Source: "{#DistDir}\windows-x86_64\{#UpdaterExe}"; DestDir: "{app}"; Flags: ignoreversion {#SignFlags}
#ifdef TrustedRoot
; The backend's TUF root (`cargo xtask installer --trusted-root`), pinned by per-machine installs.
Source: "{#TrustedRoot}"; DestDir: "{app}"; DestName: "root.json"; Flags: ignoreversion; Check: IsAdminInstallMode
#endif

[UninstallDelete]
; Left behind by an interrupted self-update (updater: rename to .old, then swap).
Type: files; Name: "{app}\*.old"

[Code]
const
  { `cms_agent --status`/`--stop` exit code when no agent runs (docs/CONTRACT.md). }
  ExitNoInstance = 3;
  { The per-machine agent's service (docs/CONTRACT.md). }
  ServiceName = 'CMSAgent';
  { How long the service may take to stop (the agent needs about 10 s). }
  StopTimeoutMs = 60000;
  { How long an update in flight may take to finish before the files are replaced. }
  UpdaterTimeoutMs = 120000;
  RunKey = 'Software\Microsoft\Windows\CurrentVersion\Run';

  SC_MANAGER_CONNECT = $0001;
  SERVICE_QUERY_STATUS = $0004;
  SERVICE_START = $0010;
  SERVICE_STOP = $0020;
  SERVICE_DELETE = $00010000;
  SERVICE_CONTROL_STOP = 1;
  SERVICE_STOPPED = 1;
  SERVICE_RUNNING = 4;
  PROCESS_TERMINATE = $0001;
  PROCESS_QUERY_LIMITED_INFORMATION = $1000;
  SYNCHRONIZE = $00100000;
  WAIT_OBJECT_0 = 0;
  CRED_TYPE_GENERIC = 1;

type
  TServiceStatus = record
    dwServiceType: Cardinal;
    dwCurrentState: Cardinal;
    dwControlsAccepted: Cardinal;
    dwWin32ExitCode: Cardinal;
    dwServiceSpecificExitCode: Cardinal;
    dwCheckPoint: Cardinal;
    dwWaitHint: Cardinal;
  end;

{ The Service Control Manager and process API, called directly (Setup has no service support). }
function OpenSCManager(MachineName, DatabaseName: String; Access: Cardinal): THandle;
  external 'OpenSCManagerW@advapi32.dll stdcall';
function OpenService(Manager: THandle; Name: String; Access: Cardinal): THandle;
  external 'OpenServiceW@advapi32.dll stdcall';
function CloseServiceHandle(Handle: THandle): Boolean;
  external 'CloseServiceHandle@advapi32.dll stdcall';
function ControlService(Service: THandle; Control: Cardinal; var Status: TServiceStatus): Boolean;
  external 'ControlService@advapi32.dll stdcall';
function QueryServiceStatus(Service: THandle; var Status: TServiceStatus): Boolean;
  external 'QueryServiceStatus@advapi32.dll stdcall';
function StartService(Service: THandle; ArgCount: Cardinal; Args: Cardinal): Boolean;
  external 'StartServiceW@advapi32.dll stdcall';
function DeleteService(Service: THandle): Boolean;
  external 'DeleteService@advapi32.dll stdcall';
function CredDelete(Target: String; CredType: Cardinal; Flags: Cardinal): Boolean;
  external 'CredDeleteW@advapi32.dll stdcall';
function OpenProcess(Access: Cardinal; Inherit: Boolean; Pid: Cardinal): THandle;
  external 'OpenProcess@kernel32.dll stdcall';
function TerminateProcess(Process: THandle; ExitCode: Cardinal): Boolean;
  external 'TerminateProcess@kernel32.dll stdcall';
function WaitForSingleObject(Handle: THandle; Milliseconds: Cardinal): Cardinal;
  external 'WaitForSingleObject@kernel32.dll stdcall';
function CloseHandle(Handle: THandle): Boolean;
  external 'CloseHandle@kernel32.dll stdcall';
function QueryFullProcessImageName(Process: THandle; Flags: Cardinal; Name: String; var Size: Cardinal): Boolean;
  external 'QueryFullProcessImageNameW@kernel32.dll stdcall';

// Program Files per machine; %LOCALAPPDATA%\Programs per user (what userpf is on Windows).
function DefaultInstallDir(Param: String): String;
begin
  if IsAdminInstallMode() then
    Result := ExpandConstant('{commonpf}\{#AppName}')
  else
    Result := ExpandConstant('{localappdata}\Programs\{#AppName}');
end;

function AgentPath(): String;
begin
  Result := ExpandConstant('{app}\{#AgentExe}');
end;

{ The agent's data folder for this install mode (docs/CONTRACT.md). }
function DataDir(): String;
begin
  if IsAdminInstallMode() then
    Result := ExpandConstant('{commonappdata}\{#DataFolder}')
  else
    Result := ExpandConstant('{localappdata}\{#DataFolder}');
end;

{ What tells the agent which one it is: the machine's (elevated) or the user's (--per-user,
  which also covers an elevated user installing for themselves). }
function ModeArgs(): String;
begin
  if IsAdminInstallMode() then
    Result := ''
  else
    Result := '--per-user ';
end;

{ Runs a program hidden, waits for it, logs Shown (never a secret) and the exit code
  (-1: could not start). }
function RunHiddenLogged(const FileName, Params, Shown: String): Integer;
var
  Code: Integer;
begin
  if not Exec(FileName, Params, '', SW_HIDE, ewWaitUntilTerminated, Code) then
    Code := -1;
  Log(Format('%s %s -> exit code %d', [FileName, Shown, Code]));
  Result := Code;
end;

function RunHidden(const FileName, Params: String): Integer;
begin
  Result := RunHiddenLogged(FileName, Params, Params);
end;

{ Whether the command line has the switch Name (e.g. '/PURGE'), any case. }
function HasSwitch(const Name: String): Boolean;
var
  I: Integer;
begin
  Result := False;
  for I := 1 to ParamCount do
    if CompareText(ParamStr(I), Name) = 0 then
      Result := True;
end;

{ The number after "Key": in the JSON file Path (0 when absent or unreadable). }
function JsonNumber(const Path, Key: String): Cardinal;
var
  Raw: AnsiString;
  Text, Digits: String;
  I: Integer;
begin
  Result := 0;
  if not LoadStringFromFile(Path, Raw) then
    Exit;
  Text := String(Raw);
  I := Pos('"' + Key + '":', Text);
  if I = 0 then
    Exit;
  I := I + Length(Key) + 3;
  while (I <= Length(Text)) and (Text[I] = ' ') do
    I := I + 1;
  Digits := '';
  while (I <= Length(Text)) and (Text[I] >= '0') and (Text[I] <= '9') do
  begin
    Digits := Digits + Text[I];
    I := I + 1;
  end;
  Result := StrToIntDef(Digits, 0);
end;

{ The program the process runs, '' when it cannot be read. }
function ProcessImage(Process: THandle): String;
var
  Size: Cardinal;
begin
  Size := 1024;
  SetLength(Result, Size);
  if QueryFullProcessImageName(Process, 0, Result, Size) then
    SetLength(Result, Size)
  else
    Result := '';
end;

{ The SCM's handle on the service CMSAgent with Access, 0 when it is not installed; Manager
  must be closed with it (CloseAgentService). }
function OpenAgentService(Access: Cardinal; var Manager: THandle): THandle;
begin
  Result := 0;
  Manager := OpenSCManager('', 'ServicesActive', SC_MANAGER_CONNECT);
  if Manager = 0 then
  begin
    Log('Cannot connect to the Service Control Manager.');
    Exit;
  end;
  Result := OpenService(Manager, ServiceName, Access);
end;

procedure CloseAgentService(Service, Manager: THandle);
begin
  if Service <> 0 then
    CloseServiceHandle(Service);
  if Manager <> 0 then
    CloseServiceHandle(Manager);
end;

{ Asks the SCM to stop the service and waits up to StopTimeoutMs for STOPPED; True when it is
  stopped or not installed. }
function StopAgentService(): Boolean;
var
  Manager, Service: THandle;
  Status: TServiceStatus;
  Waited: Integer;
begin
  Result := True;
  Service := OpenAgentService(SERVICE_STOP or SERVICE_QUERY_STATUS, Manager);
  if (Service <> 0) and QueryServiceStatus(Service, Status) and (Status.dwCurrentState <> SERVICE_STOPPED) then
  begin
    Log('Stopping the service ' + ServiceName + ' through the SCM.');
    Waited := 0;
    while QueryServiceStatus(Service, Status) and (Status.dwCurrentState <> SERVICE_STOPPED) and (Waited < StopTimeoutMs) do
    begin
      { Asked again while it runs: a service still starting cannot take the control yet. }
      if Status.dwCurrentState = SERVICE_RUNNING then
        ControlService(Service, SERVICE_CONTROL_STOP, Status);
      Sleep(250);
      Waited := Waited + 250;
    end;
    Result := Status.dwCurrentState = SERVICE_STOPPED;
    Log(Format('Service %s: state %d after %d ms.', [ServiceName, Status.dwCurrentState, Waited]));
  end;
  CloseAgentService(Service, Manager);
end;

function StartAgentService(): Boolean;
var
  Manager, Service: THandle;
begin
  Service := OpenAgentService(SERVICE_START, Manager);
  Result := (Service <> 0) and StartService(Service, 0, 0);
  CloseAgentService(Service, Manager);
end;

procedure DeleteAgentService();
var
  Manager, Service: THandle;
begin
  Service := OpenAgentService(SERVICE_DELETE, Manager);
  if (Service <> 0) and DeleteService(Service) then
    Log('Service ' + ServiceName + ' deleted.');
  CloseAgentService(Service, Manager);
end;

{ Waits (bounded) for an updater named in the update journal, so no swap is cut short. }
procedure WaitForUpdateInFlight();
var
  Pid: Cardinal;
  Process: THandle;
begin
  Pid := JsonNumber(DataDir() + '\updates\update-journal.json', 'updater_pid');
  if Pid = 0 then
    Exit;
  Process := OpenProcess(SYNCHRONIZE or PROCESS_QUERY_LIMITED_INFORMATION, False, Pid);
  if Process = 0 then
    Exit;
  if Pos('\updater.exe', Lowercase(ProcessImage(Process))) > 0 then
  begin
    Log(Format('An update is in flight; waiting for its updater (pid %d).', [Pid]));
    if WaitForSingleObject(Process, UpdaterTimeoutMs) <> WAIT_OBJECT_0 then
      Log('The updater is still running; going on.');
  end;
  CloseHandle(Process);
end;

{ Ends the process named in agent.lock, and only if it runs this install's cms_agent.exe (a
  stale lock file may name a PID that is another program's by now). }
procedure EndLockHolder();
var
  Pid: Cardinal;
  Process: THandle;
begin
  Pid := JsonNumber(DataDir() + '\agent.lock', 'pid');
  if Pid = 0 then
    Exit;
  Process := OpenProcess(PROCESS_TERMINATE or SYNCHRONIZE or PROCESS_QUERY_LIMITED_INFORMATION, False, Pid);
  if Process = 0 then
  begin
    Log(Format('agent.lock names pid %d, which does not run.', [Pid]));
    Exit;
  end;
  if CompareText(ProcessImage(Process), AgentPath()) = 0 then
  begin
    Log(Format('Ending the agent (pid %d), which did not stop when asked.', [Pid]));
    TerminateProcess(Process, 1);
    WaitForSingleObject(Process, 10000);
  end
  else
    Log(Format('agent.lock names pid %d, which is not %s; left alone.', [Pid, AgentPath()]));
  CloseHandle(Process);
end;

{ Stops this install's agent gracefully: the service through the SCM, any other agent on this
  data folder with `--stop`, and as a last resort the process agent.lock names. }
procedure StopAgent();
var
  Code: Integer;
begin
  WaitForUpdateInFlight();
  if IsAdminInstallMode() and not StopAgentService() then
    Log('The service did not stop in time.');
  if FileExists(DataDir() + '\agent.lock') and FileExists(AgentPath()) then
  begin
    { 0: stopped; 3: none runs. An older cms_agent.exe does not know --stop. }
    Code := RunHidden(AgentPath(), ModeArgs() + '--stop');
    if (Code <> 0) and (Code <> ExitNoInstance) then
      EndLockHolder();
  end
  else
    Log('No agent holds the lock.');
end;

{ Whether the agent's config.json names a server ("server_url": "..."). }
function ServerConfigured(): Boolean;
var
  Raw: AnsiString;
  Text: String;
  I: Integer;
begin
  Result := False;
  if not LoadStringFromFile(DataDir() + '\config.json', Raw) then
    Exit;
  Text := String(Raw);
  I := Pos('"server_url":', Text);
  if I = 0 then
    Exit;
  I := I + Length('"server_url":');
  while (I <= Length(Text)) and (Text[I] = ' ') do
    I := I + 1;
  Result := (I <= Length(Text)) and (Text[I] = '"');
end;

{ `--trusted-root` with the root this setup embeds (root.json in the install folder), per
  machine only, when a server is known and no root is pinned yet; '' otherwise (logged). }
function EmbeddedRootArgs(const Server: String): String;
begin
  Result := '';
#ifdef TrustedRoot
  if not IsAdminInstallMode() then
    Log('Per-user install: the agent trusts the server''s TUF root on first use (no /TRUSTEDROOT=).')
  else if FileExists(DataDir() + '\tuf\pinned-root.json') then
    Log('A TUF root is already pinned; the embedded root.json is not pinned again.')
  else if (Server = '') and not ServerConfigured() then
    Log('No server given or configured: the embedded root.json is not pinned (pass --server and --trusted-root "' + ExpandConstant('{app}\root.json') + '").')
  else
  begin
    Log('Pinning the TUF root shipped with the installer: ' + ExpandConstant('{app}\root.json'));
    Result := ' --trusted-root ' + AddQuotes(ExpandConstant('{app}\root.json'));
  end;
#endif
end;

{ The settings for `--enable-autostart`, from /SERVER=, /ENROLLMENTTOKEN=, /GROUP=,
  /DOWNLOADLIMIT=, /METERED= and /TRUSTEDROOT= (else the embedded root, EmbeddedRootArgs). }
function AgentSettingsArgs(): String;
var
  Server, Token, Group, DownloadLimit, Metered, Root: String;
begin
  Result := '';
  Server := ExpandConstant('{param:SERVER}');
  Token := ExpandConstant('{param:ENROLLMENTTOKEN}');
  Group := ExpandConstant('{param:GROUP}');
  DownloadLimit := ExpandConstant('{param:DOWNLOADLIMIT}');
  Metered := ExpandConstant('{param:METERED}');
  Root := ExpandConstant('{param:TRUSTEDROOT}');
  if Server <> '' then
    Result := ' --server ' + AddQuotes(Server);
  if Token <> '' then
    Result := Result + ' --enrollment-token ' + AddQuotes(Token);
  if Group <> '' then
    Result := Result + ' --group ' + AddQuotes(Group);
  if DownloadLimit <> '' then
    Result := Result + ' --download-limit ' + AddQuotes(DownloadLimit);
  if Metered <> '' then
    Result := Result + ' --metered ' + AddQuotes(Metered);
  if Root <> '' then
    Result := Result + ' --trusted-root ' + AddQuotes(ExpandFileName(Root))
  else
    Result := Result + EmbeddedRootArgs(Server);
end;

procedure EnableAutostartAndStart();
var
  Code: Integer;
  Shown: String;
begin
  Shown := ModeArgs() + '--enable-autostart (with the settings given; the token is not logged)';
  Code := RunHiddenLogged(AgentPath(), ModeArgs() + '--enable-autostart' + AgentSettingsArgs(), Shown);
  if Code <> 0 then
    SuppressibleMsgBox(Format('Could not register the agent to start automatically (exit code %d).', [Code]),
      mbError, MB_OK, IDOK);
  if HasSwitch('/NOSTART') then
  begin
    Log('/NOSTART: not starting the agent.');
    Exit;
  end;
  if IsAdminInstallMode() then
  begin
    if StartAgentService() then
      Log('Service ' + ServiceName + ' started.')
    else
      SuppressibleMsgBox('Could not start the service ' + ServiceName + ': ' + SysErrorMessage(DLLGetLastError()),
        mbError, MB_OK, IDOK);
  end
  else if not Exec(AgentPath(), '--per-user', '', SW_HIDE, ewNoWait, Code) then
    SuppressibleMsgBox('Could not start the agent: ' + SysErrorMessage(Code), mbError, MB_OK, IDOK)
  else
    Log('Agent started.');
end;

{ What `--disable-autostart` does, for an agent exe that cannot do it: the service or the Run
  value, and the IPC secret. }
procedure RemoveAutostartDirectly();
begin
  if IsAdminInstallMode() then
  begin
    DeleteAgentService();
    RegDeleteValue(HKLM, RunKey, 'CMSAgent');
    DeleteFile(DataDir() + '\ipc.secret');
  end
  else
  begin
    RegDeleteValue(HKCU, RunKey, 'CMSAgent');
    CredDelete('CMSAgent/ipc/user', CRED_TYPE_GENERIC, 0);
  end;
end;

function PrepareToInstall(var NeedsRestart: Boolean): String;
begin
  { Upgrade (or repair): the running agent must not hold the files being replaced. }
  StopAgent();
  Result := '';
end;

procedure CurStepChanged(CurStep: TSetupStep);
begin
  if CurStep = ssPostInstall then
    EnableAutostartAndStart();
end;

function WantPurge(): Boolean;
begin
  Result := HasSwitch('/PURGE');
  if not Result and not UninstallSilent() and DirExists(DataDir()) then
    Result := MsgBox('Also delete the agent''s data (configuration and logs) in ' + DataDir() + '?',
      mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usUninstall then
  begin
    StopAgent();
    if RunHidden(AgentPath(), ModeArgs() + '--disable-autostart') <> 0 then
      RemoveAutostartDirectly();
  end;
  if (CurUninstallStep = usPostUninstall) and WantPurge() then
  begin
    Log('Purging the data folder ' + DataDir());
    DelTree(DataDir(), True, True, True);
  end;
end;
